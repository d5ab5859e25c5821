"""Metrics every benchmark gets, over prediction rows (dicts with the `schema.prediction_schema`
fields), and the helpers the benchmark modules' own metrics share.

- `accuracy`: exact match, one row = one question (MMBench "vanilla" accuracy).
- `circular`: CircularEval, one group (an item and its rotated copies) = one question,
  right only if every row of the group is right.

Each benchmark's own metric (POPE's, MME's, A-OKVQA's direct answers) lives in its module
under `mmloop.eval.benchmarks`; `mmloop.eval.evaluation.summary` puts the blocks together.
Accuracies are fractions in [0, 1], except MME's, which are percentages as MME reports them.
Rows of different benchmarks never share a group: groups are keyed by (benchmark, group).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]


def nonempty(rows: Iterable[Row], name: str) -> list[Row]:
    """The rows as a list; none at all is an error naming the metric."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"{name}: no predictions")
    return rows


def label_or_none(value: Any) -> str | None:
    """A category (or group) label, or None for a missing one (None or NaN)."""
    return None if value is None or value != value else str(value)


def mean(hits: Sequence[int | bool]) -> float:
    return sum(map(int, hits)) / len(hits)


def yes_no_rows(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if row.get("answer_type") == "yes_no"]


def groups(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    """Rows by (benchmark, group), in first-seen order; a row without a group stands alone."""
    grouped: dict[tuple, list[Row]] = {}
    for position, row in enumerate(rows):
        group = label_or_none(row.get("group"))
        key = (row.get("benchmark"), group) if group is not None else ("row", position)
        grouped.setdefault(key, []).append(row)
    return grouped


def shared_label(members: Sequence[Row], field: str, key: tuple, name: str) -> str | None:
    """The one value of `field` that every row of a group has; ValueError naming the group otherwise."""
    values = {label_or_none(row.get(field)) for row in members}
    if len(values) > 1:
        raise ValueError(f"{name}: group {key[1]!r} of benchmark {key[0]!r} mixes {field}s {sorted(map(str, values))}")
    return values.pop()


def _by_label(pairs: Iterable[tuple[str | None, bool]]) -> tuple[dict[str, float], dict[str, int]]:
    totals: dict[str, list[int]] = {}
    for label, hit in pairs:
        if label is None:
            continue
        entry = totals.setdefault(label, [0, 0])
        entry[0] += 1
        entry[1] += int(hit)
    return ({label: hits / count for label, (count, hits) in sorted(totals.items())},
            {label: count for label, (count, _) in sorted(totals.items())})


def accuracy(rows: Iterable[Row]) -> dict[str, Any]:
    """Exact match: {"overall", "n" (rows), "categories", "l2_categories", "n_per_category"}."""
    rows = nonempty(rows, "accuracy")
    hits = [bool(row["correct"]) for row in rows]
    categories, counts = _by_label((label_or_none(row.get("category")), hit) for row, hit in zip(rows, hits))
    l2_categories, _ = _by_label((label_or_none(row.get("l2_category")), hit) for row, hit in zip(rows, hits))
    return {"overall": mean(hits), "n": len(rows), "categories": categories, "l2_categories": l2_categories,
            "n_per_category": counts}


def circular(rows: Iterable[Row]) -> dict[str, Any]:
    """CircularEval: {"overall", "n" (groups), "categories", "l2_categories", "n_per_category"
    (groups)}; a group is right only if all its rows are. Its rows must share category and l2
    category (ValueError naming the group otherwise)."""
    rows = nonempty(rows, "circular")
    results = []  # (category, l2 category, hit) per group
    for key, members in groups(rows).items():
        results.append((shared_label(members, "category", key, "circular"),
                        shared_label(members, "l2_category", key, "circular"),
                        all(bool(row["correct"]) for row in members)))
    categories, counts = _by_label((category, hit) for category, _, hit in results)
    l2_categories, _ = _by_label((l2, hit) for _, l2, hit in results)
    return {"overall": mean([hit for *_, hit in results]), "n": len(results), "categories": categories,
            "l2_categories": l2_categories, "n_per_category": counts}


def has_circular_groups(rows: Sequence[Row]) -> bool:
    """Whether some group holds more than one row (then CircularEval means something)."""
    return any(len(members) > 1 for members in groups(rows).values())

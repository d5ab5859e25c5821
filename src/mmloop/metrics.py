"""Metrics over prediction rows (dicts with the `schema.prediction_schema` fields).

- `accuracy`: exact match, one row = one question (MMBench "vanilla" accuracy).
- `circular`: CircularEval, one group (an item and its rotated copies) = one question,
  right only if every row of the group is right.
- `aokvqa_direct`: A-OKVQA direct-answer accuracy, min(1, matches / 3) per question.
- `mme`: MME acc, acc+ (per image) and score = acc + acc+ per subtask, out of 200.
- `pope`: POPE accuracy / precision / recall / F1 / yes-ratio with "yes" as the positive class.
- `summary`: the labelled blocks a metrics JSON holds.

Accuracies are fractions in [0, 1], except MME's, which are percentages as MME reports them.
Rows of different benchmarks never share a group: groups are keyed by (benchmark, group).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmloop.schema import OPTION_LETTERS

Row = Mapping[str, Any]
MME_SUPERS = ("perception", "cognition")


def _rows(rows: Iterable[Row], name: str) -> list[Row]:
    rows = list(rows)
    if not rows:
        raise ValueError(f"{name}: no predictions")
    return rows


def _label(value: Any) -> str | None:
    """A category label, or None for a missing one (None or NaN)."""
    return None if value is None or value != value else str(value)


def _mean(hits: Sequence[int | bool]) -> float:
    return sum(map(int, hits)) / len(hits)


def _groups(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    """Rows by (benchmark, group), in first-seen order; a row without a group stands alone."""
    groups: dict[tuple, list[Row]] = {}
    for position, row in enumerate(rows):
        group = _label(row.get("group"))
        key = (row.get("benchmark"), group) if group is not None else ("row", position)
        groups.setdefault(key, []).append(row)
    return groups


def _shared(members: Sequence[Row], field: str, key: tuple, name: str) -> str | None:
    values = {_label(row.get(field)) for row in members}
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


# ---------------------------------------------------------------- exact match and CircularEval

def accuracy(rows: Iterable[Row]) -> dict[str, Any]:
    """Exact match: {"overall", "n" (rows), "categories", "l2_categories", "n_per_category"}."""
    rows = _rows(rows, "accuracy")
    hits = [bool(row["correct"]) for row in rows]
    categories, counts = _by_label((_label(row.get("category")), hit) for row, hit in zip(rows, hits))
    l2_categories, _ = _by_label((_label(row.get("l2_category")), hit) for row, hit in zip(rows, hits))
    return {"overall": _mean(hits), "n": len(rows), "categories": categories, "l2_categories": l2_categories,
            "n_per_category": counts}


def circular(rows: Iterable[Row]) -> dict[str, Any]:
    """CircularEval: {"overall", "n" (groups), "categories", "l2_categories", "n_per_category"
    (groups)}; a group is right only if all its rows are. Its rows must share category and l2
    category (ValueError naming the group otherwise)."""
    rows = _rows(rows, "circular")
    results = []  # (category, l2 category, hit) per group
    for key, members in _groups(rows).items():
        results.append((_shared(members, "category", key, "circular"),
                        _shared(members, "l2_category", key, "circular"),
                        all(bool(row["correct"]) for row in members)))
    categories, counts = _by_label((category, hit) for category, _, hit in results)
    l2_categories, _ = _by_label((l2, hit) for _, l2, hit in results)
    return {"overall": _mean([hit for *_, hit in results]), "n": len(results), "categories": categories,
            "l2_categories": l2_categories, "n_per_category": counts}


# ---------------------------------------------------------------- A-OKVQA direct answers

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalise_answer(text: str | None) -> str:
    """VQA-style answer normalisation: lower-case, apostrophes dropped, other punctuation to
    spaces (a decimal point kept), number words to digits, articles a/an/the removed."""
    text = (text or "").lower().replace("'", "").replace("\u2019", "")
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = re.sub(r"[^\w\s.]|_", " ", text)
    words = [_NUMBERS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def predicted_text(row: Row) -> str:
    """The answer text a prediction stands for: an mcq letter's option text ("" for "none" or a
    letter past the options), otherwise the prediction itself."""
    prediction = row.get("prediction") or ""
    if prediction == "none":
        return ""
    if row.get("answer_type", "mcq") == "mcq" or row.get("options"):
        options = list(row.get("options") or [])
        at = OPTION_LETTERS.find(prediction) if len(prediction) == 1 else -1
        return options[at] if 0 <= at < len(options) else ""
    return prediction


def aokvqa_direct(rows: Iterable[Row], skip: set[str] | None = None) -> dict[str, Any]:
    """A-OKVQA direct-answer accuracy over rows with direct answers whose item is not in `skip`
    (e.g. the items marked difficult_direct_answer): {"direct_answer": mean of
    min(1, matches / 3), "n": rows scored}; matches = direct answers equal to the predicted
    text, both normalised (`normalise_answer`)."""
    rows = _rows(rows, "aokvqa_direct")
    skip = set(skip or ())
    scores = []
    for row in rows:
        answers = list(row.get("direct_answers") or [])
        if not answers or row.get("item") in skip:
            continue
        predicted = normalise_answer(predicted_text(row))
        matches = sum(normalise_answer(answer) == predicted for answer in answers) if predicted else 0
        scores.append(min(1.0, matches / 3.0))
    if not scores:
        raise ValueError("aokvqa_direct: no predictions with direct answers")
    return {"direct_answer": sum(scores) / len(scores), "n": len(scores)}


# ---------------------------------------------------------------- MME

def mme(rows: Iterable[Row]) -> dict[str, Any]:
    """MME: {"subtasks": {category: {"acc", "acc_plus", "score", "n", "n_images", "l2_category"}},
    "perception", "cognition", "total"}. acc: % of questions right; acc_plus: % of images
    (groups) with every question right; score = acc + acc_plus (at most 200). "perception" /
    "cognition": the summed scores of the subtasks with that l2 category; "total": the sum over
    all subtasks. Every row needs a category."""
    rows = _rows(rows, "mme")
    subtasks: dict[str, list[Row]] = {}
    for row in rows:
        category = _label(row.get("category"))
        if category is None:
            raise ValueError(f"mme: prediction {row.get('item')!r} has no category (MME subtask)")
        subtasks.setdefault(category, []).append(row)
    result: dict[str, Any] = {"subtasks": {}}
    for category, members in sorted(subtasks.items()):
        l2 = _shared(members, "l2_category", (members[0].get("benchmark"), category), "mme")
        images = _groups(members)
        acc = 100.0 * _mean([bool(row["correct"]) for row in members])
        acc_plus = 100.0 * _mean([all(bool(row["correct"]) for row in image) for image in images.values()])
        result["subtasks"][category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                                        "n": len(members), "n_images": len(images), "l2_category": l2}
    for name in MME_SUPERS:
        result[name] = sum(entry["score"] for entry in result["subtasks"].values()
                           if (entry["l2_category"] or "").lower() == name)
    result["total"] = sum(entry["score"] for entry in result["subtasks"].values())
    return result


# ---------------------------------------------------------------- POPE

def _pope_block(rows: Sequence[Row]) -> dict[str, Any]:
    tp = fp = fn = tn = yes = 0
    for row in rows:
        gold = str(row["answer"]).strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"pope: prediction {row.get('item')!r} has answer {row['answer']!r}, not yes/no")
        said_yes = str(row.get("prediction") or "").strip().lower() == "yes"
        said_no = str(row.get("prediction") or "").strip().lower() == "no"
        yes += said_yes
        if gold == "yes":
            tp += said_yes
            fn += not said_yes  # "no" and "none" both miss a positive
        else:
            fp += said_yes
            tn += said_no
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(rows)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": yes / n, "n": n}


def pope(rows: Iterable[Row]) -> dict[str, Any]:
    """POPE with "yes" positive: {"overall": block, "categories": {split: block}}, a block being
    {"accuracy", "precision", "recall", "f1", "yes_ratio" (share of predictions that are "yes"),
    "n"}. A "none" prediction is wrong and not a "yes"; precision is 0.0 without any "yes"."""
    rows = _rows(rows, "pope")
    splits: dict[str, list[Row]] = {}
    for row in rows:
        category = _label(row.get("category"))
        if category is not None:
            splits.setdefault(category, []).append(row)
    return {"overall": _pope_block(rows),
            "categories": {category: _pope_block(members) for category, members in sorted(splits.items())}}


# ---------------------------------------------------------------- the metrics JSON

def summary(rows: Iterable[Row], benchmark_kind: str | None = None) -> dict[str, Any]:
    """The labelled metric blocks for a set of predictions:
    - "exact_match": `accuracy` (every row its own question), always;
    - "circular": `circular`, only when some group has more than one row;
    - "mme": `mme` over the yes_no rows, when `benchmark_kind == "mme"` and there are some;
    - "pope": `pope` over the yes_no rows, when `benchmark_kind == "pope"`;
    - "aokvqa_direct": `aokvqa_direct`, when some row has direct answers."""
    rows = _rows(rows, "summary")
    result: dict[str, Any] = {"exact_match": accuracy(rows)}
    if any(len(members) > 1 for members in _groups(rows).values()):
        result["circular"] = circular(rows)
    yes_no = [row for row in rows if row.get("answer_type") == "yes_no"]
    if benchmark_kind == "mme" and yes_no:
        result["mme"] = mme(yes_no)
    if benchmark_kind == "pope":
        if not yes_no:
            raise ValueError("summary: benchmark kind 'pope' but no yes_no predictions")
        result["pope"] = pope(yes_no)
    if any(row.get("direct_answers") for row in rows):
        result["aokvqa_direct"] = aokvqa_direct(rows)
    return result

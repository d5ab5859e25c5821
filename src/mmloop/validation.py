"""great-expectations suites at every stage boundary.

Each stage calls `validate` on what it is about to publish, before writing it,
so a failing suite publishes nothing. Row-wise facts that need Python (the
image file exists, its sha256 matches, the answer is one of the options) are
computed here as boolean columns named `check_*`; great-expectations then
expects them to be True, so its report names the failing rows by their ids.

Suites:
- "samples":     seed / generated / evolved / kept / rejected rows (sample schema)
- "queries":     rows chosen by bad-case sampling (sample schema, origin "query")
- "badcases":    wrong benchmark answers (sample schema, origin "badcase")
- "predictions": benchmark predictions (prediction schema, keyed by `item`)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmloop.questions import YES_NO
from mmloop.schema import FORMATS, NO_PREDICTION, OPTION_LETTERS, REJECT_REASONS, ROLES

SUITES = ("samples", "queries", "badcases", "predictions")

# Which origins each sample-schema suite accepts.
SUITE_ORIGINS = {
    "samples": ("seed", "generated", "evolved", "self", "preference"),
    "queries": ("query",),
    "badcases": ("badcase",),
}

# Score columns (flattened from the `scores` struct) and their allowed ranges; nulls are allowed.
SCORE_RANGES = {
    "scores.clip": (-1.0, 1.0),
    "scores.difficulty": (1.0, 10.0),
    "scores.judge": (1.0, 10.0),
    "scores.evolution_gain": (0.0, 1.0),
    "scores.visual_independence": (0.0, 1.0),
    "scores.duplicate_cluster": (0, None),
}

# How many failing ids a message lists per expectation before it says "+N more".
MAX_IDS_SHOWN = 20

ROW_COLUMN = "row_number"


class ValidationError(ValueError):
    """A suite failed. `failures` lists (expectation description, failing ids)."""

    def __init__(self, source: str, suite: str, failures: list[tuple[str, list[str]]]):
        self.source = source
        self.suite = suite
        self.failures = failures
        lines = [f"{source}: suite {suite!r} failed {len(failures)} expectation(s):"]
        for description, ids in failures:
            if not ids:
                lines.append(f"  - {description}")
                continue
            shown = ", ".join(ids[:MAX_IDS_SHOWN])
            more = f" (+{len(ids) - MAX_IDS_SHOWN} more)" if len(ids) > MAX_IDS_SHOWN else ""
            lines.append(f"  - {description}: {len(ids)} row(s): {shown}{more}")
        super().__init__("\n".join(lines))


def validate(records_or_dataframe: Iterable[Mapping[str, Any]] | Any, suite: str, *,
             source: str | os.PathLike, iteration: int | str | None = None,
             data_root: str | os.PathLike = "data") -> None:
    """Run `suite` on the rows; raise ValidationError naming `source`, the failing
    expectations and the failing rows' ids. Returns None when everything passes, and for no
    rows (an elimination that rejected nothing), which break no expectation."""
    if suite not in SUITES:
        raise ValueError(f"unknown validation suite {suite!r} (have {', '.join(SUITES)})")
    source = str(source)
    frame = _to_frame(records_or_dataframe)
    if frame.empty:
        return
    _quiet_great_expectations()  # before great_expectations is first imported: it logs on import
    if suite == "predictions":
        id_column = "item"
        frame, expectations = _prediction_checks(frame, source, iteration)
    else:
        id_column = "sample_id"
        frame, expectations = _sample_checks(frame, suite, source, iteration, Path(data_root))
    failures = _run_great_expectations(frame, suite, expectations, id_column)
    if failures:
        raise ValidationError(source, suite, failures)


# ---------------------------------------------------------------- frames and derived checks

def _to_frame(records_or_dataframe):
    import pandas as pd

    if isinstance(records_or_dataframe, pd.DataFrame):
        frame = records_or_dataframe.copy()
    else:
        frame = pd.DataFrame(list(records_or_dataframe))
    # Flatten the `scores` struct so each score is a column great-expectations can range-check.
    if "scores" in frame.columns:
        scores = [value if isinstance(value, Mapping) else {} for value in frame["scores"]]
        for column in SCORE_RANGES:
            key = column.split(".", 1)[1]
            frame[column] = pd.to_numeric(pd.Series([row.get(key) for row in scores], index=frame.index,
                                                    dtype=object), errors="coerce")
    frame = frame.reset_index(drop=True)
    frame[ROW_COLUMN] = range(len(frame))
    return frame


def _require_columns(frame, columns: Iterable[str], source: str, suite: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValidationError(source, suite, [(f"required column(s) missing: {', '.join(missing)}", [])])


def _as_list(value) -> list:
    """Lists arrive as Python lists (records) or numpy arrays (parquet via pandas)."""
    if value is None:
        return []
    if isinstance(value, float) and value != value:  # NaN from pandas for a missing list
        return []
    return list(value)


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


# Hashes of image files, keyed by (absolute path, mtime, size), so a stage validating
# several outputs over the same images hashes each file once per process.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str | None:
    from mmloop.io import sha256_file

    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def _image_checks(frame, data_root: Path, *, image_required: bool,
                  hash_without_file: bool = False) -> tuple[list[bool], list[bool]]:
    """(file exists, sha256 matches) per row; each distinct image is hashed once.

    A null image is allowed where the suite allows it: then it has no hash, or, with
    `hash_without_file`, it must carry the hash of an image kept elsewhere (a bad case's
    image that lives only in the benchmark file)."""
    hashes: dict[str, str | None] = {}
    exists, matches = [], []
    for image, expected in zip(frame["image"], frame["image_sha256"]):
        if _is_null(image):
            exists.append(not image_required)
            matches.append(not image_required and _is_null(expected) != hash_without_file)
            continue
        if image not in hashes:
            hashes[image] = _file_sha256(data_root / image)
        actual = hashes[image]
        exists.append(actual is not None)
        matches.append(actual is not None and actual == expected)
    return exists, matches


def _answer_in_options(row_format, options, answer, *, answer_required: bool = True) -> bool:
    if row_format != "mcq":
        return True
    if not answer_required and _is_null(answer) and not _as_list(options):
        return True
    options = _as_list(options)
    return len(options) >= 2 and not _is_null(answer) and answer in options


def _conversations_valid(conversations, *, required: bool) -> bool:
    turns = _as_list(conversations)
    if not turns:
        return not required
    for turn in turns:
        if not isinstance(turn, Mapping) or turn.get("role") not in ROLES:
            return False
        if not isinstance(turn.get("content"), str):
            return False
    return any(turn["role"] == "user" for turn in turns)


def _verdict_consistent(kept, reason) -> bool:
    """kept=False needs a known reject_reason; kept=True or null needs none."""
    if _is_null(kept):
        return _is_null(reason)
    if bool(kept):
        return _is_null(reason)
    return reason in REJECT_REASONS


def _sample_checks(frame, suite: str, source: str, iteration, data_root: Path):
    import great_expectations as gx

    _require_columns(frame, ("sample_id", "iteration", "origin", "image", "image_sha256", "conversations",
                             "format", "options", "answer", "parent_ids"), source, suite)
    # Queries carry no conversation or answer yet (the generator writes them); everything else must.
    conversations_required = suite != "queries"
    exists, matches = _image_checks(frame, data_root, image_required=suite == "queries",
                                    hash_without_file=suite == "badcases")
    frame["check_image_exists"] = exists
    frame["check_image_sha256_matches"] = matches
    frame["check_answer_in_options"] = [
        _answer_in_options(*values, answer_required=suite != "queries")
        for values in zip(frame["format"], frame["options"], frame["answer"])]
    frame["check_conversations_valid"] = [
        _conversations_valid(value, required=conversations_required) for value in frame["conversations"]]
    if "kept" in frame.columns and "reject_reason" in frame.columns:
        frame["check_verdict_consistent"] = [
            _verdict_consistent(*values) for values in zip(frame["kept"], frame["reject_reason"])]
    if suite == "queries":
        # A query names the bad case it was sampled for, unless it was drawn at random for a
        # category with no bad cases (provenance.operator "random").
        operators = [value.get("operator") if isinstance(value, Mapping) else None
                     for value in frame.get("provenance", [None] * len(frame))]
        frame["check_has_parent"] = [len(_as_list(parents)) > 0 or operator == "random"
                                     for parents, operator in zip(frame["parent_ids"], operators)]

    expectations = [
        gx.expectations.ExpectColumnValuesToNotBeNull(column="sample_id"),
        gx.expectations.ExpectColumnValuesToBeUnique(column="sample_id"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="iteration"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="origin", value_set=list(SUITE_ORIGINS[suite])),
        gx.expectations.ExpectColumnValuesToBeInSet(column="format", value_set=list(FORMATS)),
    ]
    if suite == "badcases":
        expectations.append(gx.expectations.ExpectColumnValuesToMatchRegex(column="sample_id", regex=r"^badcase-"))
    if iteration is not None:
        expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(column="iteration",
                                                                        value_set=[int(iteration)]))
    for column, (low, high) in SCORE_RANGES.items():
        if column in frame.columns:
            expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(
                column=column, min_value=low, max_value=high))
    expectations += _true_expectations(frame)
    return frame, expectations


def _prediction_checks(frame, source: str, iteration):
    import great_expectations as gx

    _require_columns(frame, ("item", "prediction", "correct", "options"), source, "predictions")
    # One prediction per item for each (benchmark, model, mode, rounds) that the table holds.
    key_columns = [column for column in ("item", "benchmark", "model", "mode", "rounds") if column in frame.columns]
    frame["prediction_key"] = ["\x1f".join(str(value) for value in values)
                               for values in zip(*(frame[column] for column in key_columns))]
    # numpy's bool_ is what a parquet bool column gives back through pandas.
    frame["check_correct_is_bool"] = [type(value).__name__ in ("bool", "bool_") for value in frame["correct"]]
    answer_types = frame["answer_type"] if "answer_type" in frame.columns else ["mcq"] * len(frame)
    frame["check_prediction_valid"] = [
        _prediction_valid(prediction, options, answer_type)
        for prediction, options, answer_type in zip(frame["prediction"], frame["options"], answer_types)]
    if "option_scores" in frame.columns:
        # Scores are optional (generative mode has none); when present there is one per option
        # (a yes/no item scores its two replies).
        frame["check_option_scores_match_options"] = [
            len(_as_list(scores)) in (0, 2 if answer_type == "yes_no" else len(_as_list(options)))
            for scores, options, answer_type in zip(frame["option_scores"], frame["options"], answer_types)]

    expectations = [
        gx.expectations.ExpectColumnValuesToNotBeNull(column="item"),
        gx.expectations.ExpectColumnValuesToBeUnique(column="prediction_key"),
    ]
    if iteration is not None:
        _require_columns(frame, ("iteration",), source, "predictions")
        expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(column="iteration",
                                                                        value_set=[int(iteration)]))
    if "latency_ms" in frame.columns:
        expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(column="latency_ms", min_value=0))
    expectations += _true_expectations(frame)
    return frame, expectations


def _prediction_valid(prediction, options, answer_type="mcq") -> bool:
    if _is_null(prediction):
        return False
    if answer_type == "yes_no":
        return prediction in (*YES_NO, NO_PREDICTION)
    options = _as_list(options)
    letters = OPTION_LETTERS[:len(options)] if options else OPTION_LETTERS
    return prediction == NO_PREDICTION or prediction in letters


def _true_expectations(frame) -> list:
    import great_expectations as gx

    return [gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=[True])
            for column in frame.columns if column.startswith("check_")]


# ---------------------------------------------------------------- great-expectations run

def _quiet_great_expectations() -> None:
    import logging

    # No usage statistics leave the machine, and GE's own logs stay out of stage output.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)


def _run_great_expectations(frame, suite_name: str, expectations: list, id_column: str
                            ) -> list[tuple[str, list[str]]]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_great_expectations()  # again: importing GE may configure its loggers

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (context.data_sources.add_pandas(f"{suite_name}-rows")
                        .add_dataframe_asset(suite_name)
                        .add_batch_definition_whole_dataframe("all rows"))
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}-boundary", data=batch_definition, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column, ROW_COLUMN]},
    )
    if result.success:
        return []

    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        description = _describe(config.type, config.kwargs)
        exception = outcome.exception_info or {}
        if exception.get("raised_exception"):
            failures.append((f"{description} raised {exception.get('exception_message')}", []))
            continue
        ids = []
        for entry in outcome.result.get("unexpected_index_list") or []:
            identifier = entry.get(id_column)
            label = f"<null {id_column} at row {entry[ROW_COLUMN]}>" if _is_null(identifier) else str(identifier)
            if label not in ids:
                ids.append(label)
        failures.append((description, ids))
    return failures


def _describe(expectation_type: str, kwargs: Mapping[str, Any]) -> str:
    column = kwargs.get("column")
    details = [f"column={column!r}"]
    for key in ("value_set", "min_value", "max_value", "regex"):
        if kwargs.get(key) is not None:
            details.append(f"{key}={kwargs[key]!r}")
    return f"{expectation_type}({', '.join(details)})"

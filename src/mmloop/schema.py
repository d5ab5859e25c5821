"""The sample record: declared once, used by every stage.

Every row that flows through the loop is a sample: seed conversations,
bad cases found by evaluation, queries chosen by sampling, generated and
evolved instructions. One schema for all of them keeps lineage a single
recursive query over every parquet file of every iteration.

Field meanings:
- sample_id: derived from content (`make_sample_id`); the same inputs give the same id.
- parent_ids: the samples this one was made from (bad cases, queries, seeds).
- iteration: the loop iteration that made the row (0 = seed and base model).
- origin: see ORIGINS.
- image / image_sha256: path relative to the data root of the content-addressed
  image store (`store/ab/abcd...png`), and the sha256 of its bytes.
- conversations: `{role, content}` turns, role in ROLES. The image belongs to the
  first user turn; contents carry no image placeholder tokens.
- category / format / question / options / answer: what the sample asks. `answer`
  is the text of the correct option (for mcq it is one of `options`); `format`
  "conversation" marks a multi-round sample mixing categories (category "mixed").
- provenance: who made it and how (backend, model, prompt, request hash, operator,
  round, the question program as JSON, the source file, an LLM judge's one-line reason).
- scores: filter scores; null when not computed. `difficulty` (1..10) is evolution's judge's
  of the row; `evolution_gain` its gain over the parent (0..1 of the scale);
  `visual_independence` the model's probability of the right option with the image blanked;
  `judge` elimination's answer check (10 verified, 1 mismatch).
- kept / reject_reason: the verdict, reject_reason one of REJECT_REASONS; null before elimination
  (a teacher's rows that produced no item arrive already rejected).

Benchmark predictions have their own schema (`prediction_schema`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmloop.io import stable_hash

ORIGINS = ("seed", "badcase", "query", "generated", "evolved", "self", "preference")
FORMATS = ("mcq", "short", "open", "yes_no", "caption", "conversation")
ROLES = ("system", "user", "assistant")
OPTION_LETTERS = "ABCDEFGH"
# A benchmark prediction from which no option could be extracted.
NO_PREDICTION = "none"
MIXED_CATEGORY = "mixed"
# What a teacher needs of a query to write a sample for it.
QUERY_FIELDS = ("sample_id", "image", "image_sha256", "category")

PROVENANCE_FIELDS = (
    "backend", "model", "prompt_id", "prompt_sha256", "request_hash",
    "operator", "round", "program", "source", "judge_note",
)
SCORE_FIELDS = ("clip", "difficulty", "evolution_gain", "judge", "visual_independence", "duplicate_cluster")

# Why a row has kept=False (`reject_reason`): one name per reason, whoever rejects the row.
# Elimination's verdicts, in the order it checks them.
ANSWER_MISMATCH, CLIP_LOW, DUPLICATE, NEAR_DUPLICATE = "answer_mismatch", "clip_low", "duplicate", "near_duplicate"
ELIMINATION_REASONS = (ANSWER_MISMATCH, CLIP_LOW, DUPLICATE, NEAR_DUPLICATE)
# MMEvol's judge verdicts on an evolved child against its parent.
VISUALLY_INDEPENDENT, NO_GAIN, JUDGE_LOW = "visually_independent", "no_gain", "judge_low"
EVOLUTION_REASONS = (VISUALLY_INDEPENDENT, NO_GAIN, JUDGE_LOW)
# A teacher's queries that produced no item (the row keeps the prompt and the reply for review).
SKIPPED, PARSE_FAILED, REQUEST_FAILED = "skipped", "parse_failed", "request_failed"
TEACHER_REASONS = (SKIPPED, PARSE_FAILED, REQUEST_FAILED)
REJECT_REASONS = (*ELIMINATION_REASONS, *EVOLUTION_REASONS, *TEACHER_REASONS)


@functools.cache
def sample_schema():
    import pyarrow as pa

    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    provenance = pa.struct([
        ("backend", pa.string()), ("model", pa.string()),
        ("prompt_id", pa.string()), ("prompt_sha256", pa.string()),
        ("request_hash", pa.string()), ("operator", pa.string()),
        ("round", pa.int32()), ("program", pa.string()), ("source", pa.string()),
        ("judge_note", pa.string()),
    ])
    scores = pa.struct([
        ("clip", pa.float64()), ("difficulty", pa.float64()), ("evolution_gain", pa.float64()),
        ("judge", pa.float64()),
        ("visual_independence", pa.float64()), ("duplicate_cluster", pa.int64()),
    ])
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("parent_ids", pa.list_(pa.string())),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("image", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("conversations", pa.list_(turn)),
        pa.field("category", pa.string()),
        pa.field("format", pa.string()),
        pa.field("question", pa.string()),
        pa.field("options", pa.list_(pa.string())),
        pa.field("answer", pa.string()),
        pa.field("provenance", provenance),
        pa.field("scores", scores),
        pa.field("kept", pa.bool_()),
        pa.field("reject_reason", pa.string()),
    ])


@functools.cache
def prediction_schema():
    """One row per scored benchmark item (see `mmloop.eval.evaluation`).

    - item: "<benchmark>-<index>"; group: the item's CircularEval / MME image-pair group.
    - mode: "loglik" (option log-likelihood) or "generate" (generation plus extraction).
    - answer / prediction: letters for mcq items, "yes"/"no" for yes_no items; a prediction
      that no option could be extracted from is NO_PREDICTION ("none").
    - raw_output: the generated text (null in loglik mode); extracted_by: which extraction
      step produced the prediction ("letter", "option_text", "yes_no", "judge", "none",
      or "loglik").
    - rounds: earlier turns before the scored question (0 = single round); prompt: the
      scored user turn as the model saw it, so a score can be reproduced.
    """
    import pyarrow as pa

    return pa.schema([
        pa.field("item", pa.string(), nullable=False),
        pa.field("benchmark", pa.string()),
        pa.field("model", pa.string()),
        pa.field("iteration", pa.int32()),
        pa.field("mode", pa.string()),
        pa.field("answer_type", pa.string()),
        pa.field("category", pa.string()),
        pa.field("l2_category", pa.string()),
        pa.field("group", pa.string()),
        pa.field("question", pa.string()),
        pa.field("options", pa.list_(pa.string())),
        pa.field("answer", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("correct", pa.bool_()),
        pa.field("raw_output", pa.string()),
        pa.field("extracted_by", pa.string()),
        pa.field("option_scores", pa.list_(pa.float64())),
        pa.field("direct_answers", pa.list_(pa.string())),
        pa.field("rounds", pa.int32()),
        pa.field("prompt", pa.string()),
        pa.field("latency_ms", pa.float64()),
        pa.field("image_sha256", pa.string()),
    ])


# ---------------------------------------------------------------- benchmark items

# Every benchmark reader (`mmloop.eval.benchmarks`) normalises its format to these fields:
# - index: unique within the benchmark (str); question; hint (None when absent);
# - answer_type: "mcq" (options lettered A.., answer a letter) or "yes_no" (no options,
#   answer "yes" or "no");
# - options: the option texts in letter order ([] for yes_no); answer;
# - category, l2_category (None when the format has none);
# - image (the encoded bytes), image_sha256;
# - group: items scored together: MMBench circular copies (index % 1e6), an MME image's
#   question pair; None when the item stands alone;
# - direct_answers: A-OKVQA's free-form reference answers ([] elsewhere).
ANSWER_TYPES = ("mcq", "yes_no")
BENCH_ITEM_FIELDS = ("index", "question", "hint", "answer_type", "options", "answer", "category",
                     "l2_category", "image", "image_sha256", "group", "direct_answers")


def bench_item(**fields: Any) -> dict[str, Any]:
    """A benchmark item with every field present (defaults: no hint, mcq, no l2 category,
    no group, no direct answers); unknown keys are kept as extra columns."""
    item = {"hint": None, "answer_type": "mcq", "options": [], "l2_category": None, "group": None,
            "direct_answers": [], **fields}
    missing = [name for name in BENCH_ITEM_FIELDS if name not in item]
    if missing:
        raise KeyError(f"benchmark item {fields.get('index')!r}: missing field(s) {missing}")
    if item["answer_type"] not in ANSWER_TYPES:
        raise ValueError(f"benchmark item {item['index']!r}: answer_type must be one of {ANSWER_TYPES}, "
                         f"got {item['answer_type']!r}")
    item["index"] = str(item["index"])
    item["options"] = list(item["options"])
    item["direct_answers"] = list(item["direct_answers"] or [])
    return item


def make_sample_id(image_sha256: str | None, conversations: Sequence[Mapping[str, str]],
                   origin: str, *extra: Any) -> str:
    """Content-derived id: image hash plus conversation plus origin (plus any extra key)."""
    turns = [[turn["role"], turn["content"]] for turn in conversations]
    return f"{origin[:3]}-{stable_hash(image_sha256, turns, origin, *extra)}"


# A preference pair is a sample (its question, the chosen answer, the image, lineage) plus the
# rejected answer and how it was made (SENA: the image noised to step noise_t with noise_seed).
PAIR_COLUMNS = ("rejected", "initial_answer", "description", "noise_t", "noise_seed", "check_margin")


@functools.cache
def pair_schema():
    import pyarrow as pa

    extra = [pa.field("rejected", pa.string()), pa.field("initial_answer", pa.string()),
             pa.field("description", pa.string()), pa.field("noise_t", pa.int32()),
             pa.field("noise_seed", pa.int64()), pa.field("check_margin", pa.float64())]
    return pa.schema([*sample_schema(), *extra])


def sample(**fields: Any) -> dict[str, Any]:
    """A sample record with every schema field present (missing ones null)."""
    names = sample_schema().names
    unknown = set(fields) - set(names)
    if unknown:
        raise KeyError(f"unknown sample fields: {sorted(unknown)}")
    record = {name: fields.get(name) for name in names}
    record["provenance"] = {key: (record["provenance"] or {}).get(key) for key in PROVENANCE_FIELDS}
    record["scores"] = {key: (record["scores"] or {}).get(key) for key in SCORE_FIELDS}
    if isinstance(record["provenance"]["program"], (dict, list)):
        record["provenance"]["program"] = json.dumps(record["provenance"]["program"], sort_keys=True)
    record["parent_ids"] = list(record["parent_ids"] or [])
    record["options"] = list(record["options"] or [])
    record["conversations"] = [dict(role=t["role"], content=t["content"]) for t in record["conversations"] or []]
    return record


def to_table(records: Iterable[Mapping[str, Any]], schema=None):
    """Records to an Arrow table of the given schema (default: samples)."""
    import pyarrow as pa

    schema = schema or sample_schema()
    rows = list(records)
    return pa.Table.from_pylist(rows, schema=schema)


def write_samples(records: Iterable[Mapping[str, Any]], path, schema=None) -> int:
    """Write records as parquet, atomically. Returns the row count."""
    import pyarrow.parquet as pq

    from mmloop.io import atomic_path

    table = to_table(records, schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def read_samples(path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def require_fields(record: Mapping[str, Any], fields: Sequence[str], source: str) -> None:
    """A clear error naming `source`, the record and the first missing (empty) field."""
    for name in fields:
        if not record.get(name):
            raise ValueError(f"{source}: record {record.get('sample_id')!r}: field {name!r} is missing")


def letter(index: int) -> str:
    return OPTION_LETTERS[index]

"""Every supported benchmark format, one module each, registered in BENCHMARKS.

A format's module holds its whole definition: the reader (the file into `schema.bench_item`
dicts), the prompt convention of the harness that defines it, and its own metric blocks
beside exact match and CircularEval, which every benchmark gets (`mmloop.eval.metrics`).

| format      | reader           | file                                                        |
|-------------|------------------|-------------------------------------------------------------|
| `mmbench`   | `read_mmbench`   | MMBench TSV (VLMEvalKit's, circular copies included)        |
| `aokvqa`    | `read_aokvqa`    | A-OKVQA JSON, images from a COCO folder                     |
| `pope`      | `read_pope`      | POPE JSONL (or a JSON list)                                 |
| `mme`       | `read_mme`       | MME's release folder, or a TSV/JSON/JSONL table             |
| `seedbench` | `read_seedbench` | SEED-Bench JSON (image items only)                          |
| `jsonl`     | `read_jsonl`     | plain JSONL: question, options, answer, category, image     |

Each reader returns items in file order: index (unique, str), question, hint, answer_type
("mcq" with lettered options and a letter answer, or "yes_no" with no options and
"yes"/"no"), options, answer, category, l2_category, image (the file's bytes), image_sha256,
group (items scored together) and direct_answers. Readers take `(path, image_dir=None)`:
image paths are relative to `image_dir`, by default the file's folder (MMBench embeds its
images and refuses one). Errors name the benchmark file, the record (TSV row, JSON record,
JSONL line, with its index or question id) and the field; a missing image file is a
FileNotFoundError naming all three and the image path. Each image file is read once however
many items share it.

`load_benchmark` reads a file in a named format, or the one `guess_format` sees in it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks import aokvqa, jsonl, mmbench, mme, pope, seedbench
from mmloop.eval.benchmarks.records import load_json
from mmloop.eval.prompts import PromptConvention

Items = list[dict[str, Any]]
MetricBlocks = Callable[[list[Mapping[str, Any]]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One format: `read(path, image_dir=None, **options)`, the prompt `convention`, and
    `metric_blocks(rows)`, the labelled blocks it adds to a metrics file (None: none)."""

    name: str
    read: Callable[..., Items]
    convention: PromptConvention
    metric_blocks: MetricBlocks | None = None


BENCHMARKS = {benchmark.name: benchmark for benchmark in (
    Benchmark("mmbench", mmbench.read_mmbench, mmbench.CONVENTION),
    Benchmark("aokvqa", aokvqa.read_aokvqa, aokvqa.CONVENTION, aokvqa.metric_blocks),
    Benchmark("pope", pope.read_pope, pope.CONVENTION, pope.metric_blocks),
    Benchmark("mme", mme.read_mme, mme.CONVENTION, mme.metric_blocks),
    Benchmark("seedbench", seedbench.read_seedbench, seedbench.CONVENTION),
    Benchmark("jsonl", jsonl.read_jsonl, jsonl.CONVENTION),
)}
FORMATS = tuple(BENCHMARKS)


def lookup(kind: str) -> Benchmark:
    """The benchmark format named `kind` (any case)."""
    try:
        return BENCHMARKS[str(kind).lower()]
    except KeyError:
        raise ValueError(f"unknown benchmark kind {kind!r} (known: {', '.join(FORMATS)})") from None


def load_benchmark(path: str | os.PathLike, format: str | None = None, *,
                   image_dir: str | os.PathLike | None = None, **options: Any) -> Items:
    """Benchmark items of `path` in `format` (one of FORMATS), guessed from the path when None.

    `image_dir` is where A-OKVQA, POPE, SEED-Bench, JSONL and MME-table image paths are
    relative to (default: the benchmark file's folder); MMBench embeds its images and takes
    none. Other keyword arguments go to the reader (e.g. `category=` for POPE).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    if format is None:
        format = guess_format(path)
    if format not in FORMATS:
        raise ValueError(f"{path}: unknown benchmark format {format!r}; the formats are {', '.join(FORMATS)}")
    return BENCHMARKS[format].read(path, image_dir, **options)


def guess_format(path: str | os.PathLike) -> str:
    """The FORMATS name a file or folder looks like; ValueError listing the formats when unsure.

    A directory is MME's release folder; `.tsv` is MMBench unless its header has no A/B
    columns but has question and answer (then an MME table); `.json`/`.jsonl` look at the
    content: a dict with `questions` is SEED-Bench, records with `choices` A-OKVQA, records
    with `label` and `text` POPE, other JSONL records plain JSONL."""
    path = Path(path)

    def unsure(why: str) -> ValueError:
        return ValueError(f"{path}: cannot tell the benchmark format ({why}); pass format= one of "
                          f"{', '.join(FORMATS)}")

    if path.is_dir():
        return "mme"
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = [name.strip() for name in handle.readline().rstrip("\r\n").split("\t")]
        if "A" not in header and "B" not in header and {"question", "answer"} <= set(header):
            return "mme"
        return "mmbench"
    if suffix not in (".json", ".jsonl"):
        raise unsure(f"suffix {suffix or '(none)'!r} is none of .tsv, .json, .jsonl and it is not a folder")
    data, lines = load_json(path, jsonl=suffix == ".jsonl")
    if lines is not None:
        first = lines[0][1] if lines else None
    elif isinstance(data, Mapping):
        if "questions" in data:
            return "seedbench"
        raise unsure("a JSON object without 'questions'")
    elif isinstance(data, list):
        first = data[0] if data else None
    else:
        raise unsure(f"JSON {type(data).__name__}, not a list of records")
    if not isinstance(first, Mapping):
        raise unsure("no records" if first is None else f"the first record is a {type(first).__name__}")
    if "choices" in first:
        return "aokvqa"
    if "label" in first and "text" in first:
        return "pope"
    if lines is not None:
        return "jsonl"
    raise unsure(f"the first record has none of 'choices' (aokvqa), 'label' and 'text' (pope); "
                 f"fields {sorted(first)}")

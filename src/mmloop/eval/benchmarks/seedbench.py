"""SEED-Bench: the JSON file ({"questions": [...], "question_type": {name: id}}), image items only.

Prompt: lmms-eval seedbench/utils.py (the question, "A. ..." lines with no "Options:" line,
LLaVA's letter suffix). Metric: exact match per question type; nothing of its own.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks.records import (ImageFiles, check_unique, identifier, lettered_options, load_json,
                                            record_location, required_text)
from mmloop.eval.prompts import PromptConvention
from mmloop.schema import OPTION_LETTERS, bench_item

CONVENTION = PromptConvention(name="seedbench", options_header=False)
CHOICE_FIELDS = tuple(f"choice_{letter.lower()}" for letter in OPTION_LETTERS)


def read_seedbench(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Image items of a SEED-Bench JSON file, images under `image_dir` (default: the file's folder).

    index: question_id; options: choice_a.. in order; answer: a letter; category: the
    question type's name (str(question_type_id) when the map lacks it); image: `data_id`
    under `image_dir`. Items whose data_type is not "image" (SEED-Bench's video questions)
    are skipped, with a warning counting them.
    """
    path = Path(path)
    image_dir = path.parent if image_dir is None else Path(image_dir)
    data, lines = load_json(path, jsonl=False)
    if lines is not None or not isinstance(data, Mapping) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{path}: field 'questions': a SEED-Bench file is a JSON object with a 'questions' list")
    type_map = data.get("question_type") or {}
    if not isinstance(type_map, Mapping):
        raise ValueError(f"{path}: field 'question_type' must map type names to ids, got {type_map!r}")
    type_names = {str(type_id): str(name) for name, type_id in type_map.items()}
    images = ImageFiles()
    skipped: Counter[str] = Counter()
    items, wheres, labels = [], [], []
    for position, record in enumerate(data["questions"]):
        label = f"questions[{position}]"
        if not isinstance(record, Mapping):
            raise ValueError(f"{path}: {label}: expected a JSON object, got {type(record).__name__}")
        where = record_location(path, label, record, "question_id")
        data_type = record.get("data_type", "image")
        if data_type != "image":
            skipped[str(data_type)] += 1
            continue
        index = identifier(record, "question_id", where)
        question = required_text(record, "question", where)
        options = _choices(record, where)
        answer = str(record.get("answer", "")).strip().upper()
        if answer not in OPTION_LETTERS[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {record.get('answer')!r} is not among the options "
                             f"{', '.join(OPTION_LETTERS[:len(options)])}")
        type_id = record.get("question_type_id")
        if type_id is None or type_id == "":
            raise ValueError(f"{where}: field 'question_type_id' is missing")
        image, sha = images.read(image_dir / required_text(record, "data_id", where), where, "data_id")
        items.append(bench_item(index=index, question=question, answer_type="mcq", options=options, answer=answer,
                                category=type_names.get(str(type_id), str(type_id)), image=image, image_sha256=sha))
        wheres.append(where)
        labels.append(label)
    if skipped:
        counts = ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items()))
        warnings.warn(f"{path}: skipped {sum(skipped.values())} non-image SEED-Bench item(s) ({counts}); "
                      f"read {len(items)} image item(s)", stacklevel=2)
        if not items:
            raise ValueError(f"{path}: no image items (all {sum(skipped.values())} are {counts})")
    check_unique(items, wheres, labels, "question_id")
    return items


def _choices(record: Mapping[str, Any], where: str) -> list[str]:
    """The choice_a.. fields up to the last one present, as lettered options."""
    present = [position for position, name in enumerate(CHOICE_FIELDS) if name in record]
    cells = []
    for name in CHOICE_FIELDS[:present[-1] + 1 if present else 0]:
        value = record.get(name)
        if value is not None and not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: field {name!r} must be text, got {value!r}")
        cells.append("" if value is None else str(value).strip())
    return lettered_options(cells, where, CHOICE_FIELDS)

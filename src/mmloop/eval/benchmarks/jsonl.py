"""Plain JSONL: one object per line with question, options, answer, category and an image path.

Prompt: the MMBench prompt (= `questions.mcq_prompt`). Metric: exact match; nothing of its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks.records import (ImageFiles, check_unique, identifier, option_list, optional_hint,
                                            read_records, record_location, required_text, yes_no_answer)
from mmloop.eval.prompts import PromptConvention
from mmloop.schema import BENCH_ITEM_FIELDS, OPTION_LETTERS, bench_item

CONVENTION = PromptConvention(name="jsonl")
# The record fields read into item fields; any other field is kept as an extra column.
FIELDS = ("index", "question", "hint", "options", "answer", "category", "l2_category", "group", "image")


def read_jsonl(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items of a plain JSONL file, one object per line: question, options (a list; empty or
    absent for a yes/no item), answer (a letter, or the text of one option, read as its
    letter; "yes"/"no" when there are no options), category, image (a path relative to
    `image_dir`, default the file's folder), and optionally index (default: the line
    number, from 1), hint, l2_category and group. Other fields are kept as extra columns.
    """
    path = Path(path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    images = ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in read_records(path, jsonl=True):
        where = record_location(path, label, record, "index")
        index = record.get("index")
        index = label.split()[-1] if index is None or index == "" else identifier(record, "index", where)
        question = required_text(record, "question", where)
        raw_options = record.get("options") or []
        if not isinstance(raw_options, list) or not all(isinstance(option, str) for option in raw_options):
            raise ValueError(f"{where}: field 'options' must be a list of strings, got {raw_options!r}")
        if raw_options:
            options = option_list(raw_options, where, "options")
            answer, answer_type = answer_letter(record.get("answer"), options, where), "mcq"
        else:
            options, answer_type = [], "yes_no"
            answer = yes_no_answer(record.get("answer"), where, "answer",
                                   why=" (an item without options is a yes/no item)")
        image, sha = images.read(image_dir / required_text(record, "image", where), where, "image")
        group = record.get("group")
        fields = {key: value for key, value in record.items() if key not in FIELDS and key not in BENCH_ITEM_FIELDS}
        fields.update(index=index, question=question, hint=optional_hint(record.get("hint")), answer_type=answer_type,
                      options=options, answer=answer, category=required_text(record, "category", where),
                      l2_category=record.get("l2_category") or None, image=image, image_sha256=sha,
                      group=None if group is None or group == "" else str(group))
        items.append(bench_item(**fields))
        wheres.append(where)
        labels.append(label)
    check_unique(items, wheres, labels, "index")
    return items


def answer_letter(answer: Any, options: Sequence[str], where: str) -> str:
    """A letter answer, or the text of one option, as the option's letter."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: field 'answer' must be an option letter or an option's text, got {answer!r}")
    text = answer.strip()
    letters = OPTION_LETTERS[:len(options)]
    by_letter = text if len(text) == 1 and text in letters else None
    matches = [position for position, option in enumerate(options) if option == text]
    if not matches:
        matches = [position for position, option in enumerate(options) if option.lower() == text.lower()]
    if len(matches) > 1:
        raise ValueError(f"{where}: field 'answer': {answer!r} matches options "
                         f"{', '.join(letters[position] for position in matches)}")
    by_text = letters[matches[0]] if matches else None
    if by_letter and by_text and by_letter != by_text:
        raise ValueError(f"{where}: field 'answer': {answer!r} is ambiguous: option letter {by_letter} or "
                         f"the text of option {by_text}")
    if not (by_letter or by_text):
        raise ValueError(f"{where}: field 'answer': {answer!r} is neither an option letter "
                         f"({', '.join(letters)}) nor the text of an option")
    return by_letter or by_text

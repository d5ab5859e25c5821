"""POPE: object-hallucination yes/no questions, a JSONL file (or a JSON list) of
{question_id, image, text, label}.

Prompt: lmms-eval pope/utils.py (the question, then "Answer the question using a single word
or phrase."). Metric: accuracy, precision, recall, F1 and yes-ratio with "yes" as the
positive class, overall and per split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks.records import (ImageFiles, check_unique, identifier, read_records, record_location,
                                            required_text, yes_no_answer)
from mmloop.eval.metrics import Row, label_or_none, nonempty, yes_no_rows
from mmloop.eval.prompts import PromptConvention
from mmloop.questions import YES_NO
from mmloop.schema import bench_item

CONVENTION = PromptConvention(name="pope")
SPLITS = ("adversarial", "popular", "random")


def read_pope(path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
              category: str | None = None) -> list[dict[str, Any]]:
    """Items of a POPE file: JSONL (as POPE ships it, even under a `.json` name) or a JSON list
    of {question_id, image, text, label}; images under `image_dir` (default: the file's folder).

    answer_type "yes_no", answer: the label lower-cased. category: `category`, else the
    record's `category`, else the POPE split named in the file name (adversarial, popular,
    random), else "pope".
    """
    path = Path(path)
    image_dir = path.parent if image_dir is None else Path(image_dir)
    records = read_records(path)
    split = next((name for name in SPLITS if name in path.name.lower()), "pope")
    images = ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in records:
        where = record_location(path, label, record, "question_id")
        index = identifier(record, "question_id", where)
        question = required_text(record, "text", where)
        answer = yes_no_answer(record.get("label"), where, "label")
        image, sha = images.read(image_dir / required_text(record, "image", where), where, "image")
        items.append(bench_item(index=index, question=question, answer_type="yes_no", options=[],
                                answer=answer, category=str(category or record.get("category") or split),
                                image=image, image_sha256=sha))
        wheres.append(where)
        labels.append(label)
    check_unique(items, wheres, labels, "question_id")
    return items


def _pope_block(rows: Sequence[Row]) -> dict[str, Any]:
    tp = fp = fn = tn = yes = 0
    for row in rows:
        gold = str(row["answer"]).strip().lower()
        if gold not in YES_NO:
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
    rows = nonempty(rows, "pope")
    splits: dict[str, list[Row]] = {}
    for row in rows:
        category = label_or_none(row.get("category"))
        if category is not None:
            splits.setdefault(category, []).append(row)
    return {"overall": _pope_block(rows),
            "categories": {category: _pope_block(members) for category, members in sorted(splits.items())}}


def metric_blocks(rows: list[Row]) -> dict[str, Any]:
    """{"pope": ...} over the yes_no rows; a POPE run without any is an error."""
    yes_no = yes_no_rows(rows)
    if not yes_no:
        raise ValueError("summary: benchmark kind 'pope' but no yes_no predictions")
    return {"pope": pope(yes_no)}

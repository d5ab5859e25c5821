"""A-OKVQA: the JSON file with images from a COCO folder; multiple choice plus direct answers.

Prompt: LLaVA-1.5's A-OKVQA multiple-choice format (the options right after the question,
no "Options:" line, the letter suffix). Metric: direct-answer accuracy, min(1, matches / 3)
per question, beside exact match on the choices.

A-OKVQA marks questions whose ten direct answers disagree too much as
`difficult_direct_answer`. The official evaluation (allenai/aokvqa,
evaluation/eval_predictions.py `eval_aokvqa`) drops them only in the direct-answer
setting: `if multiple_choice is False: dataset = {... if v['difficult_direct_answer'] is False}`;
multiple-choice accuracy counts every question. (An earlier revision of that file, and
the aokvqa_utils.py copy, had the condition inverted; the later one above is the fix.)
So the flag is kept on every item for a direct-answer scorer to filter on (`skip`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks.records import (ImageFiles, check_unique, identifier, option_list, read_records,
                                            record_location, required_text)
from mmloop.eval.metrics import Row, nonempty
from mmloop.eval.prompts import PromptConvention
from mmloop.schema import OPTION_LETTERS, bench_item

CONVENTION = PromptConvention(name="aokvqa", options_header=False)
# VQA answer normalisation: articles dropped, number words as digits.
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
# Direct answers that must match for full credit (VQA accuracy).
FULL_CREDIT_MATCHES = 3.0


def read_aokvqa(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items of an A-OKVQA JSON file (a list of records), images from `image_dir` (default:
    the file's folder).

    index: question_id; options: choices; answer: the letter of correct_choice_idx;
    direct_answers: the ten free-form answers; category: the record's `category`, else
    "aokvqa". The image is the record's `image` or `file_name` under `image_dir`, else
    COCO 2017's `{image_id:012d}.jpg`. Extra fields: `difficult_direct_answer` (always;
    False when absent) and `rationales` (when present). A file without answers (the test
    split) is an error.
    """
    path = Path(path)
    image_dir = path.parent if image_dir is None else Path(image_dir)
    records = read_records(path)
    images = ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in records:
        where = record_location(path, label, record, "question_id")
        index = identifier(record, "question_id", where)
        question = required_text(record, "question", where)
        choices = record.get("choices")
        if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
            raise ValueError(f"{where}: field 'choices' must be a list of strings, got {choices!r}")
        options = option_list(choices, where, "choices")
        if record.get("correct_choice_idx") is None:
            if not any(other.get("correct_choice_idx") is not None for _, other in records):
                raise ValueError(f"{where}: field 'correct_choice_idx' is missing: {path} has no answers "
                                 f"(A-OKVQA's test split ships without them; use train or val)")
            raise ValueError(f"{where}: field 'correct_choice_idx' is missing")
        correct = record["correct_choice_idx"]
        if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(options):
            raise ValueError(f"{where}: field 'correct_choice_idx': {correct!r} is not an option number "
                             f"0..{len(options) - 1}")
        direct = record.get("direct_answers")
        if not isinstance(direct, list) or not direct or not all(isinstance(answer, str) for answer in direct):
            raise ValueError(f"{where}: field 'direct_answers' must be a non-empty list of strings, got {direct!r}")
        difficult = record.get("difficult_direct_answer", False)
        if not isinstance(difficult, bool):
            raise ValueError(f"{where}: field 'difficult_direct_answer' must be true or false, got {difficult!r}")
        name, field = _image_name(record, where)
        image, sha = images.read(image_dir / name, where, field)
        extra = {"difficult_direct_answer": difficult}
        if record.get("rationales") is not None:
            extra["rationales"] = list(record["rationales"])
        category = record.get("category") or "aokvqa"
        items.append(bench_item(index=index, question=question, answer_type="mcq", options=options,
                                answer=OPTION_LETTERS[correct], category=str(category), image=image,
                                image_sha256=sha, direct_answers=direct, **extra))
        wheres.append(where)
        labels.append(label)
    check_unique(items, wheres, labels, "question_id")
    return items


def _image_name(record, where: str) -> tuple[str, str]:
    """(the image's file name, the field it comes from): `image`, `file_name`, or COCO's name for `image_id`."""
    name = record.get("image") or record.get("file_name")
    if name:
        return str(name), "image" if record.get("image") else "file_name"
    image_id = record.get("image_id")
    if isinstance(image_id, str) and image_id.strip().isdigit():
        image_id = int(image_id)
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise ValueError(f"{where}: field 'image_id' must be a COCO image id (an integer) when the "
                         f"record has no 'image' or 'file_name', got {image_id!r}")
    return f"{image_id:012d}.jpg", "image_id"


# ---------------------------------------------------------------- direct-answer accuracy

def normalise_answer(text: str | None) -> str:
    """VQA-style answer normalisation: lower-case, apostrophes dropped, other punctuation to
    spaces (a decimal point kept), number words to digits, articles a/an/the removed."""
    text = (text or "").lower().replace("'", "").replace("\u2019", "")
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = re.sub(r"[^\w\s.]|_", " ", text)
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
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
    rows = nonempty(rows, "aokvqa_direct")
    skip = set(skip or ())
    scores = []
    for row in rows:
        answers = list(row.get("direct_answers") or [])
        if not answers or row.get("item") in skip:
            continue
        predicted = normalise_answer(predicted_text(row))
        matches = sum(normalise_answer(answer) == predicted for answer in answers) if predicted else 0
        scores.append(min(1.0, matches / FULL_CREDIT_MATCHES))
    if not scores:
        raise ValueError("aokvqa_direct: no predictions with direct answers")
    return {"direct_answer": sum(scores) / len(scores), "n": len(scores)}


def metric_blocks(rows: list[Row]) -> dict[str, Any]:
    """{"aokvqa_direct": ...} when some row has direct answers."""
    return {"aokvqa_direct": aokvqa_direct(rows)} if any(row.get("direct_answers") for row in rows) else {}

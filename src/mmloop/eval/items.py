"""Benchmark items as the evaluation reads them: checked and completed (`normalise_item`),
named in predictions (`item_id`), expanded for CircularEval (`circular_copies`), and their
images decoded once each.

Items are `schema.bench_item` dicts as the benchmark readers return them; dicts without
answer_type / group / direct_answers are read as mcq items standing alone: "mcq" (lettered
options, the answer a letter) or "yes_no" (no options, the answer "yes"/"no").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmloop.questions import YES_NO
from mmloop.schema import ANSWER_TYPES, OPTION_LETTERS

# VLMEvalKit's circular MMBench: copy k of question i (options rotated) has index i + k * 1e6.
CIRCULAR_OFFSET = 1_000_000


def item_id(benchmark: str, index: Any) -> str:
    """A prediction's `item`: the benchmark name and the item's index ("shapes-17")."""
    return f"{benchmark}-{index}"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def normalise_item(item: Mapping[str, Any], position: int | None = None) -> dict[str, Any]:
    """The item with every field `evaluate` reads present and checked (answer_type mcq when
    absent, yes/no answers lower-cased, group a string or None). Errors name the item and field."""
    where = f"benchmark item {item.get('index', position)!r}"
    for field in ("index", "question", "image", "image_sha256"):
        if is_missing(item.get(field)):
            raise ValueError(f"{where}: field {field!r} is missing")
    answer_type = item.get("answer_type") or "mcq"
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"{where}: field 'answer_type' must be one of {ANSWER_TYPES}, got {answer_type!r}")
    options = list(item.get("options") or [])
    answer = item.get("answer")
    if answer_type == "mcq":
        if not 2 <= len(options) <= len(OPTION_LETTERS):
            raise ValueError(f"{where}: field 'options': an mcq item needs 2 to {len(OPTION_LETTERS)} options, "
                             f"got {len(options)}")
        if answer not in OPTION_LETTERS[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {answer!r} is not one of the option letters "
                             f"{OPTION_LETTERS[:len(options)]}")
    else:
        if options:
            raise ValueError(f"{where}: field 'options': a yes_no item has no options, got {options!r}")
        answer = str(answer or "").strip().lower()
        if answer not in YES_NO:
            raise ValueError(f"{where}: field 'answer': a yes_no answer must be 'yes' or 'no', "
                             f"got {item.get('answer')!r}")
    group = item.get("group")
    hint = item.get("hint")
    return {**item, "answer_type": answer_type, "options": options, "answer": answer,
            "hint": None if is_missing(hint) else str(hint),
            "group": None if is_missing(group) else str(group),
            "direct_answers": list(item.get("direct_answers") or [])}


def candidates(item: Mapping[str, Any]) -> Sequence[str]:
    """What a prediction of a normalised item can be, in the order of its replies."""
    return YES_NO if item["answer_type"] == "yes_no" else OPTION_LETTERS[:len(item["options"])]


def decode_images(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{image_sha256: RGB uint8 array}, each distinct image decoded once."""
    import io

    import numpy as np
    from PIL import Image

    arrays: dict[str, Any] = {}
    for item in items:
        sha = item["image_sha256"]
        if sha not in arrays:
            try:
                with Image.open(io.BytesIO(item["image"])) as handle:
                    arrays[sha] = np.array(handle.convert("RGB"), dtype=np.uint8)
            except OSError as err:
                raise ValueError(f"benchmark item {item.get('index')!r}: field 'image' is not a readable "
                                 f"image ({err})") from None
    return arrays


def circular_copies(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """CircularEval items: every mcq item once per rotation of its options (VLMEvalKit's
    circular MMBench: copy k has index + k * 1e6, options shifted by k, answer moved with
    them), all in the item's group. Items that already have circular copies in the file
    (a group of more than one item), and yes/no items, are kept as they are."""
    sizes: dict[Any, int] = {}
    for item in items:
        if item.get("group") is not None:
            sizes[item["group"]] = sizes.get(item["group"], 0) + 1
    result = []
    for item in items:
        if item.get("answer_type", "mcq") != "mcq" or sizes.get(item.get("group"), 0) > 1:
            result.append(dict(item))
            continue
        options = list(item["options"])
        answer = OPTION_LETTERS.index(item["answer"])
        group = item.get("group") or str(item["index"])
        for shift in range(len(options)):
            index = item["index"] if shift == 0 else _rotated_index(item["index"], shift)
            result.append({**item, "index": index, "group": group, "options": options[shift:] + options[:shift],
                           "answer": OPTION_LETTERS[(answer - shift) % len(options)]})
    return result


def _rotated_index(index: Any, shift: int) -> str:
    text = str(index)
    return str(int(text) + shift * CIRCULAR_OFFSET) if text.isdigit() else f"{text}@{shift}"

"""MMBench-format benchmarks: make items from held-out scenes.

An item is one MMBench row (`mmbench_row`: index, question, hint, A..D, answer letter,
category, l2-category, image as base64 of the PNG bytes), so the TSV written from it
is readable by VLMEvalKit and a real MMBench TSV is readable here. Extra keys (a
generated item's `sample_id`) become extra columns after the standard ones.

`make_items` asks `items_per_family` questions of every family, each family walking
the images in its own seeded order so the questions spread across images (an image
is asked a family's question again only after every image has had its turn).

Writing and reading the TSV (this one or a real MMBench's) is `mmloop.eval.benchmarks.mmbench`
(`write_mmbench`, `read_mmbench`), beside the other benchmark formats.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.questions import COLOURS, FAMILIES, SHAPES, Question, l2_category, make_question
from mmloop.sources import coco_objects, image_key
from mmloop.schema import letter

# Passes over a family's shuffled images before giving up on finding enough distinct questions.
MAX_PASSES = 8


# ---------------------------------------------------------------- making items

def make_items(instances: Mapping[str, Any], items_per_family: int, seed: int, *,
               data_root: str | os.PathLike = "data", families: Sequence[str] = FAMILIES,
               colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES, max_count: int = 4,
               source: str = "instances") -> list[dict[str, Any]]:
    """MMBench items: `items_per_family` per family, family by family, indexed 0..N-1.

    `instances` is a COCO instances dict whose images carry `file_name` (relative to
    `data_root`) and, in the procedural world, `sha256`. The same arguments give the
    same items. Raises ValueError when a family cannot get enough distinct questions.
    """
    if int(items_per_family) < 1:
        raise ValueError(f"bench: items_per_family must be >= 1, got {items_per_family}")
    objects = coco_objects(instances, source=source)
    files = _image_files(instances, source)
    vocabulary = {"colours": colours, "shapes": shapes, "max_count": max_count}
    encoded: dict[str, str] = {}
    items: list[dict[str, Any]] = []
    for family in families:
        made = _distinct_questions(family, objects, items_per_family, random.Random(f"bench-{seed}-{family}"),
                                   vocabulary)
        if len(made) < items_per_family:
            raise ValueError(f"{source}: only {len(made)} distinct {family!r} questions could be made from "
                             f"{len(objects)} images (bench.items_per_family is {items_per_family})")
        for key, question in made:
            if key not in encoded:
                encoded[key] = base64.b64encode(_read_image(files[key], data_root, source)).decode("ascii")
            items.append(mmbench_row(len(items), question.question, question.options, question.answer,
                                     question.category, encoded[key], hint=""))
    return items


def _distinct_questions(family: str, objects: Mapping[str, Sequence[Any]], wanted: int, rng: random.Random,
                        vocabulary: Mapping[str, Any]) -> list[tuple[str, Question]]:
    """Up to `wanted` (image key, question) pairs of `family`, no pair twice: the images are walked
    in a shuffled order, so the questions spread across them, at most MAX_PASSES times."""
    order = sorted(objects)
    rng.shuffle(order)
    made: list[tuple[str, Question]] = []
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for _ in range(MAX_PASSES):
        for key in order:
            question = make_question(family, objects[key], rng, **vocabulary)
            if question is None or (key, question.question, question.options) in seen:
                continue
            seen.add((key, question.question, question.options))
            made.append((key, question))
            if len(made) == wanted:
                return made
    return made


def mmbench_row(index: int, question: str, options: Sequence[str], answer: str, category: str, image: str, *,
                hint: str | None = None, **extra: Any) -> dict[str, Any]:
    """One MMBench row: `answer` (an option's text) becomes its letter, each option its letter's
    column, the l2-category follows the category; `image` is base64 text, `extra` extra columns."""
    options = list(options)
    row = {"index": index, "question": question, "hint": hint, "answer": letter(options.index(answer)),
           "category": category, "l2-category": l2_category(category), "image": image, **extra}
    row.update({letter(position): option for position, option in enumerate(options)})
    return row


def _image_files(instances: Mapping[str, Any], source: str) -> dict[str, str]:
    """{coco_objects key: file_name}."""
    files = {}
    for position, image in enumerate(instances["images"]):
        if not image.get("file_name"):
            raise ValueError(f"{source}: images[{position}] (id {image.get('id')}) has no 'file_name'")
        files[image_key(image)] = image["file_name"]
    return files


def _read_image(file_name: str, data_root: str | os.PathLike, source: str) -> bytes:
    path = Path(data_root) / file_name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: image file_name {file_name!r}: {path} not found") from None


def family_counts(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{category: number of items}, in first-seen order."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item["category"]] = counts.get(item["category"], 0) + 1
    return counts

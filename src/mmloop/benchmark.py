"""MMBench-format benchmarks: make items from held-out scenes and write them as a TSV.

The TSV has MMBench's columns (index, question, hint, A..D, answer, category,
l2-category, image) with the image as base64 of the PNG bytes, so the same file is
readable by VLMEvalKit and a real MMBench TSV is readable here. Extra columns (a
generated item's `sample_id`) are kept after the standard ones.

`make_items` asks `items_per_family` questions of every family, each family walking
the images in its own seeded order so the questions spread across images (an image
is asked a family's question again only after every image has had its turn).

Reading a TSV (this one or a real MMBench's) into benchmark items is
`mmloop.loaders.read_mmbench`, beside the other benchmark formats.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.questions import COLOURS, FAMILIES, L2_CATEGORY, SHAPES, make_question, objects_by_image
from mmloop.schema import OPTION_LETTERS, letter

# MMBench's columns, in its order; option columns beyond D are added when an item has them.
COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image")
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
    objects = objects_by_image(instances, source=source)
    files = _image_files(instances, source)
    keys = sorted(objects)
    encoded: dict[str, str] = {}
    items: list[dict[str, Any]] = []
    for family in families:
        rng = random.Random(f"bench-{seed}-{family}")
        order = list(keys)
        rng.shuffle(order)
        made: list[tuple[str, Any]] = []
        seen: set[tuple[str, str, tuple[str, ...]]] = set()
        for _ in range(MAX_PASSES):
            for key in order:
                question = make_question(family, objects[key], rng, colours=colours, shapes=shapes,
                                         max_count=max_count)
                if question is None or (key, question.question, question.options) in seen:
                    continue
                seen.add((key, question.question, question.options))
                made.append((key, question))
                if len(made) == items_per_family:
                    break
            if len(made) == items_per_family:
                break
        if len(made) < items_per_family:
            raise ValueError(f"{source}: only {len(made)} distinct {family!r} questions could be made from "
                             f"{len(keys)} images (bench.items_per_family is {items_per_family})")
        for key, question in made:
            if key not in encoded:
                encoded[key] = base64.b64encode(_read_image(files[key], data_root, source)).decode("ascii")
            item = {"index": len(items), "question": question.question, "hint": "",
                    "answer": question.answer_letter, "category": question.category,
                    "l2-category": L2_CATEGORY.get(question.category, question.category),
                    "image": encoded[key]}
            item.update({letter(position): option for position, option in enumerate(question.options)})
            items.append(item)
    return items


def _image_files(instances: Mapping[str, Any], source: str) -> dict[str, str]:
    """{objects_by_image key: file_name}."""
    files = {}
    for position, image in enumerate(instances["images"]):
        if not image.get("file_name"):
            raise ValueError(f"{source}: images[{position}] (id {image.get('id')}) has no 'file_name'")
        files[str(image.get("sha256") or image["id"])] = image["file_name"]
    return files


def _read_image(file_name: str, data_root: str | os.PathLike, source: str) -> bytes:
    path = Path(data_root) / file_name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: image file_name {file_name!r}: {path} not found") from None


# ---------------------------------------------------------------- writing the TSV

def write_mmbench(items: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write items as an MMBench TSV, atomically. Missing option columns and a missing or
    None hint are written empty. Returns the number of rows."""
    import csv
    import io

    from mmloop.io import write_text

    items = list(items)
    letters = [column for column in OPTION_LETTERS if any(item.get(column) not in (None, "") for item in items)]
    columns = list(COLUMNS[:3]) + sorted(set(letters) | {"A", "B", "C", "D"}) + list(COLUMNS[7:])
    extras = list(dict.fromkeys(key for item in items for key in item if key not in columns))
    columns += extras
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for item in items:
        writer.writerow(["" if item.get(column) is None else item.get(column) for column in columns])
    write_text(path, buffer.getvalue())
    return len(items)


def family_counts(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{category: number of items}, in first-seen order."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item["category"]] = counts.get(item["category"], 0) + 1
    return counts

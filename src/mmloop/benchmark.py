"""MMBench-format benchmarks: make items from held-out scenes, write and read the TSV.

The TSV has MMBench's columns (index, question, hint, A..D, answer, category,
l2-category, image) with the image as base64 of the PNG bytes, so the same file is
readable by VLMEvalKit and a real MMBench TSV is readable here. Extra columns (a
generated item's `sample_id`) are kept after the standard ones.

`make_items` asks `items_per_family` questions of every family, each family walking
the images in its own seeded order so the questions spread across images (an image
is asked a family's question again only after every image has had its turn).

`read_mmbench` normalises a TSV into items: `options` (the non-empty A.. columns in
order), `answer` (a letter), `hint` (None when empty), `image` (bytes) and
`image_sha256`. Bad rows get an error naming the file, the row and the field.
MMBench's own image de-duplication (an `image` cell holding another row's index) is
resolved.
"""

from __future__ import annotations

import base64
import binascii
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.io import sha256_bytes
from mmloop.questions import COLOURS, FAMILIES, L2_CATEGORY, SHAPES, make_question, objects_by_image
from mmloop.schema import OPTION_LETTERS, letter

# MMBench's columns, in its order; option columns beyond D are added when an item has them.
COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image")
REQUIRED = ("index", "question", "A", "B", "answer", "category", "image")
# Hint cells that mean "no hint" (an empty cell, or a NaN written out as text).
NULL_HINTS = ("", "nan")
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


# ---------------------------------------------------------------- writing and reading the TSV

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


def read_mmbench(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Normalised items of an MMBench TSV, in file order.

    Each item: index (str), question, hint (None when empty), options (list), answer
    (letter), category, l2_category (None when the column is absent or empty), image
    (bytes), image_sha256, plus any extra columns under their own names.
    """
    import pandas as pd

    path = Path(path)
    try:
        # Everything as text, and no "NA"/"None" option turned into NaN.
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark TSV not found") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a readable TSV: {err}") from None
    missing = [column for column in REQUIRED if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(have {', '.join(map(repr, table.columns))})")
    letters = [column for column in OPTION_LETTERS if column in table.columns]
    standard = set(COLUMNS) | set(letters)
    extras = [column for column in table.columns if column not in standard]
    rows = table.to_dict("records")
    images_by_index = {row["index"].strip(): row["image"] for row in rows}

    items = []
    for position, row in enumerate(rows):
        where = f"{path}: row {position} (index {row['index']!r})"
        question = row["question"].strip()
        if not question:
            raise ValueError(f"{where}: field 'question' is empty")
        options = [row[column].strip() for column in letters]
        while options and not options[-1]:
            options.pop()
        if len(options) < 2 or not all(options):
            raise ValueError(f"{where}: fields {'/'.join(letters)}: options must be 2 or more non-empty "
                             f"columns from 'A' on without gaps, got {options!r}")
        answer = row["answer"].strip()
        if answer not in letters[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {answer!r} is not among the non-empty options "
                             f"{', '.join(letters[:len(options)])}")
        category = row["category"].strip()
        if not category:
            raise ValueError(f"{where}: field 'category' is empty")
        image = _decode_image(row["image"], images_by_index, where)
        hint = row.get("hint", "").strip()
        item = {"index": row["index"].strip(), "question": question,
                "hint": None if hint.lower() in NULL_HINTS else hint,
                "options": options, "answer": answer, "category": category,
                "l2_category": row.get("l2-category", "").strip() or None,
                "image": image, "image_sha256": sha256_bytes(image)}
        item.update({column: row[column] for column in extras})
        items.append(item)
    return items


def _decode_image(cell: str, images_by_index: Mapping[str, str], where: str) -> bytes:
    cell = cell.strip()
    # MMBench stores each image once; other rows of the same image hold that row's index.
    if cell.isdigit() and cell in images_by_index and not images_by_index[cell].strip().isdigit():
        cell = images_by_index[cell].strip()
    if not cell:
        raise ValueError(f"{where}: field 'image' is empty")
    try:
        return base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{where}: field 'image' is not valid base64 ({err})") from None


def family_counts(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{category: number of items}, in first-seen order."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item["category"]] = counts.get(item["category"], 0) + 1
    return counts

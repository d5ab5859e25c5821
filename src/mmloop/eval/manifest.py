"""The loop's benchmark: the file every iteration is measured on, named once.

The bench stage writes the manifest (data/bench/bench.json): the embedded world's MMBench TSV
(data/bench/bench.tsv, written by that stage) when params `bench.source` is null, else the
user's file, read and checked at the door (`load_source`). The evaluate and sample stages load
the benchmark through `loop_benchmark(manifest)`, never by parsing a file themselves, so every
format `mmloop eval` reads works in the loop.

The manifest, a JSON object:
- format: the benchmark format (one of `benchmarks.FORMATS`), resolved (never null);
- file: the path to load (as the stages see it, relative to the repository root, or absolute);
- image_dir: where the file's image paths are relative to (null: the file's folder);
- items: the number of items;
- categories: {category: number of items}.

`items` and `categories` are checked again when the benchmark is loaded, so a file that
changed after the bench stage read it stops the run instead of scoring something else.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks import FORMATS, guess_format, load_benchmark
from mmloop.eval.items import is_missing, normalise_item

MANIFEST = "data/bench/bench.json"
FIELDS = ("format", "file", "image_dir", "items", "categories")

Items = list[dict[str, Any]]


def category_counts(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{category: number of items}, sorted by category."""
    counts: dict[str, int] = {}
    for item in items:
        category = str(item["category"])
        counts[category] = counts.get(category, 0) + 1
    return dict(sorted(counts.items()))


def check_items(items: Sequence[Mapping[str, Any]], source: str | os.PathLike) -> None:
    """What the loop needs of a benchmark beyond what its reader checks: at least one item; a
    category on every item (the sampler splits its budget by category); every item complete
    for scoring (`items.normalise_item`) with a readable image. Errors name `source`, the item
    and the field."""
    from PIL import Image, UnidentifiedImageError

    if not items:
        raise ValueError(f"{source}: the benchmark has no items; the loop needs at least one to measure the model on")
    for position, item in enumerate(items):
        where = f"{source}: item {item.get('index', position)!r}"
        category = item.get("category")
        if is_missing(category) or not str(category).strip():
            raise ValueError(f"{where}: field 'category' is missing; every item of the loop's benchmark needs one "
                             f"(the sampler splits its budget by category)")
        try:
            normalise_item(item, position)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    checked: set[str] = set()
    for item in items:
        sha = item["image_sha256"]
        if sha in checked:
            continue
        try:
            with Image.open(io.BytesIO(item["image"])) as handle:
                handle.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"{source}: item {item.get('index')!r}: field 'image' is not a readable image "
                             f"({err})") from None
        checked.add(sha)


def load_source(path: str | os.PathLike, format: str | None = None, *,
                image_dir: str | os.PathLike | None = None) -> tuple[Items, str]:
    """(items, format) of a user's benchmark file, read with `load_benchmark` (format guessed
    when None) and checked for the loop (`check_items`)."""
    format = format or guess_format(path)
    items = load_benchmark(path, format, image_dir=image_dir)
    check_items(items, path)
    return items, format


def manifest(items: Sequence[Mapping[str, Any]], *, format: str, file: str | os.PathLike,
             image_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of `items`, read (or to be read) from `file` in `format`."""
    if format not in FORMATS:
        raise ValueError(f"unknown benchmark format {format!r}; the formats are {', '.join(FORMATS)}")
    return {"format": format, "file": str(file), "image_dir": None if image_dir is None else str(image_dir),
            "items": len(items), "categories": category_counts(items)}


def write_manifest(path: str | os.PathLike, items: Sequence[Mapping[str, Any]], *, format: str,
                   file: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the manifest of `items` to `path` atomically; returns it."""
    from mmloop.io import write_json

    written = manifest(items, format=format, file=file, image_dir=image_dir)
    write_json(path, written)
    return written


def read_manifest(path: str | os.PathLike = MANIFEST) -> dict[str, Any]:
    """The manifest at `path`, its fields checked; errors name the file and the field."""
    from mmloop.io import read_json

    try:
        data = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark manifest not found; the bench stage writes it "
                                f"(`dvc repro bench`)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the benchmark manifest must be a JSON object, got {type(data).__name__}")
    missing = [field for field in FIELDS if field not in data]
    if missing:
        raise ValueError(f"{path}: benchmark manifest lacks field(s) {', '.join(map(repr, missing))}")
    if data["format"] not in FORMATS:
        raise ValueError(f"{path}: field 'format': {data['format']!r} is none of {', '.join(FORMATS)}")
    if not isinstance(data["file"], str) or not data["file"]:
        raise ValueError(f"{path}: field 'file' must be a non-empty path, got {data['file']!r}")
    if data["image_dir"] is not None and not isinstance(data["image_dir"], str):
        raise ValueError(f"{path}: field 'image_dir' must be a path or null, got {data['image_dir']!r}")
    if not isinstance(data["items"], int) or isinstance(data["items"], bool) or data["items"] < 1:
        raise ValueError(f"{path}: field 'items' must be a positive count, got {data['items']!r}")
    if not isinstance(data["categories"], dict):
        raise ValueError(f"{path}: field 'categories' must be an object, got {data['categories']!r}")
    return data


def _resolve(path: str, root: str | os.PathLike | None) -> Path:
    return Path(path) if root is None else Path(root) / path  # an absolute `path` stays itself


def loop_benchmark(manifest_path: str | os.PathLike = MANIFEST, *,
                   root: str | os.PathLike | None = None) -> tuple[Items, str]:
    """(items, format) of the loop's benchmark: the file the manifest names, loaded in its
    format with its image folder (`benchmarks.load_benchmark`). Relative paths in the
    manifest are taken from `root` (None: the working directory, the repository root for
    the stages). A file whose item count or categories differ from the manifest's is an error."""
    data = read_manifest(manifest_path)
    file = _resolve(data["file"], root)
    image_dir = None if data["image_dir"] is None else _resolve(data["image_dir"], root)
    items = load_benchmark(file, data["format"], image_dir=image_dir)
    counts = category_counts(item for item in items if not is_missing(item.get("category")))
    if len(items) != data["items"] or counts != data["categories"]:
        raise ValueError(f"{file}: {len(items)} items in categories {counts}, but {manifest_path} says "
                         f"{data['items']} in {data['categories']}: the file changed after the bench stage read "
                         f"it; rerun the bench stage (`dvc repro bench`)")
    return items, data["format"]

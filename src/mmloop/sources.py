"""User data at the door: the one place COCO, LLaVA and ShareGPT files and image folders are read.

Everything a user points params at is read here and checked before any stage uses it. Every
error is a ValueError (FileNotFoundError for a missing file) whose message starts with the
file, then the record (its position and id), then the field: `instances.json: annotations[4]
(id 12): field 'bbox' ...`. Nothing is repaired silently.

- `read_json_file`: JSON as UTF-8 text. An undecodable byte names its offset; invalid JSON its
  line and column; a `\\ud800` escape with no partner (a lone surrogate, which no UTF-8 file
  can hold) its line and column; NaN and Infinity are refused. Callers check the top level
  (`expect_object`, `expect_list`).
- `image_references`: the image files a curate source or the pool names, each resolved under
  its root with `store.inside` (no `..`, absolute path or symlink out of it). The `store` stage
  imports exactly these; readers find each one again with `StoreIndex.lookup(path, where)`.
- `read_coco`: COCO instances (+ captions) as per-image records (`CocoImage`) with the stored
  image, its `SceneObject`s and every caption; `read_conversations`: LLaVA / ShareGPT records,
  those of one image (one stored sha256) merged into one conversation (`Conversation`).
- `pool_images`, `pool_annotations`: the unlabeled pool for the sample, generate and eliminate
  stages.

Text (captions, conversation turns) must have a visible character once invisible ones
(format, control, separator and unassigned code points: zero-width spaces, BOMs, ...) are
set aside, and at most `curate.max_text_chars` characters; it is kept as written, stripped.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmloop.config import UNUSABLE, CocoSource, LlavaSource, PoolConfig
from mmloop.questions import SceneObject
from mmloop.store import StoredImage, StoreIndex, inside

# What a folder pool takes as an image (lower-cased suffix); the store decides if it really is one.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_TOKEN = "<image>"
# The token with the whitespace around it, as LLaVA writes it ("<image>\nWhat is ...").
IMAGE_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*\n?")
# COCO boxes are rounded: a box may overhang the image by this many pixels.
BBOX_TOLERANCE = 1.0
# Why a record gave no sample (the keys of a source's `skipped` counts).
NO_CONTENT = "no annotations or captions"
SAME_IMAGE = "same image as an earlier record"
DUPLICATE_RECORD = "same conversation as an earlier record of the image"
LLAVA_FROM = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SHAREGPT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


# ---------------------------------------------------------------- JSON

def read_json_file(path: str | os.PathLike) -> Any:
    """The JSON value in `path`; errors name the file and where in it the text goes wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a JSON file") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        offset = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise ValueError(f"{path}: not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} "
                         f"({err.reason}); save the file as UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    except _Constant as err:
        raise ValueError(f"{path}: not valid JSON: {err.args[0]} is not a JSON number") from None
    lone = _lone_surrogate(text)
    if lone is not None:
        line = text.count("\n", 0, lone) + 1
        column = lone - (text.rfind("\n", 0, lone) + 1) + 1
        raise ValueError(f"{path}: line {line}, column {column}: '{text[lone:lone + 6]}' is a lone UTF-16 "
                         f"surrogate, not a character (a broken emoji or a truncated string)")
    return value


class _Constant(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _Constant(name)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(text: str) -> int | None:
    """Offset of the first `\\uD800`-`\\uDFFF` escape that is not half of a high+low pair."""
    if "\\u" not in text:
        return None
    paired_low = -1
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        backslashes = 1
        while start - backslashes >= 0 and text[start - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0 or start == paired_low:
            continue  # an escaped backslash followed by "u...", or the low half of a pair
        value = int(match.group()[2:], 16)
        if value <= 0xDBFF:
            partner = _SURROGATE_ESCAPE.match(text, match.end())
            if partner and int(partner.group()[2:], 16) >= 0xDC00:
                paired_low = partner.start()
                continue
        return start
    return None


def json_type(value: Any) -> str:
    """JSON's name for a value's type: object, list, string, number, boolean, null."""
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def expect_object(value: Any, path: str | os.PathLike, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected {what}, got {json_type(value)}")
    return value


def expect_list(value: Any, path: str | os.PathLike, what: str = "a list of records") -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected {what}, got {json_type(value)}")
    return value


# ---------------------------------------------------------------- text

def visible(text: str) -> str:
    """`text` without its invisible characters (Unicode categories C* and Z*: controls, format
    characters such as zero-width spaces and BOMs, unassigned code points, spaces)."""
    return "".join(char for char in text if unicodedata.category(char)[0] not in "CZ")


def check_text(value: Any, where: str, field_name: str, max_chars: int | None) -> str:
    """A caption or turn: a string with a visible character, at most `max_chars` long; stripped."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field_name!r} must be a string, got {json_type(value)}")
    text = value.strip()
    if not visible(text):
        raise ValueError(f"{where}: field {field_name!r} has no visible text, got {_short(value)}")
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"{where}: field {field_name!r} is {len(text)} characters long, more than "
                         f"curate.max_text_chars ({max_chars})")
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


# ---------------------------------------------------------------- image references

@dataclass(frozen=True)
class ImageRef:
    """An image file a data file names: its resolved path, and the record and field naming it."""

    path: Path
    where: str


def image_references(source: CocoSource | LlavaSource | PoolConfig, data_root: str | os.PathLike
                     ) -> list[ImageRef]:
    """Every image file `source` names (a curate source or the pool), in file order.

    COCO `file_name`s are relative to the source's `image_folder` (default: the data root),
    LLaVA/ShareGPT image paths to its `image_folder`; a folder pool lists the image files
    under its folder (recursively, hidden ones left out, sorted by path)."""
    if isinstance(source, PoolConfig) and source.kind == "folder":
        return _folder_images(Path(source.image_folder))
    if isinstance(source, (CocoSource, PoolConfig)):
        path = str(source.instances)
        root = source.image_folder or data_root
        return [ImageRef(inside(root, record.file_name, record.image_where), record.image_where)
                for record in _coco_image_records(_coco_shape(read_json_file(path), path), path)]
    records = expect_list(read_json_file(source.path), source.path)
    refs = []
    for index, record in enumerate(records):
        where = _record_where(source.path, index, record)
        name, image_where = _record_image(record, source.kind, where)
        refs.append(ImageRef(inside(source.image_folder, name, image_where), image_where))
    return refs


def _folder_images(folder: Path) -> list[ImageRef]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: pool.image_folder is not a folder")
    names = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        relative = Path(directory).relative_to(folder)
        names += [(relative / name).as_posix() for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    refs = []
    for name in sorted(names):
        where = f"{folder}: image {name!r}"
        refs.append(ImageRef(inside(folder, name, where), where))
    return refs


# ---------------------------------------------------------------- COCO

@dataclass(frozen=True)
class CocoImage:
    """One usable image of a COCO source."""

    id: Any
    position: int  # its index in the instances file's `images`
    file_name: str
    stored: StoredImage
    objects: list[SceneObject]
    captions: list[str]


@dataclass
class CocoData:
    source: str  # the instances file
    captions_file: str | None
    images: list[CocoImage]  # file order
    vocabulary: list[str]  # category names, in file order
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> images left out

    @property
    def files(self) -> list[str]:
        return [path for path in (self.source, self.captions_file) if path]


@dataclass(frozen=True)
class _ImageRecord:
    position: int
    id: Any
    file_name: str
    width: float | None
    height: float | None
    sha256: str | None
    where: str

    @property
    def image_where(self) -> str:
        return f"{self.where}: field 'file_name'"


def _coco_shape(coco: Any, path: str) -> Mapping[str, Any]:
    coco = expect_object(coco, path, "a COCO instances object with 'images', 'annotations' and 'categories' lists")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{path}: COCO instances has no {key!r} list")
        expect_list(coco[key], f"{path}: field {key!r}", "a list")
    return coco


def _record_object(record: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} must be an object, got {json_type(record)}")
    return record


def _unique_record(record: Any, position: int, where: str, first: dict[Any, int], kind: str,
                   noun: str) -> tuple[Mapping[str, Any], str]:
    """(the record, where it is, with its id) of a `kind` ("images", "categories") entry whose id
    must be an integer or a string that no earlier entry (`first`: id -> position) has."""
    record = _record_object(record, where)
    if "id" not in record:
        raise ValueError(f"{where} has no 'id' field")
    if not _is_id(record["id"]):
        raise ValueError(f"{where}: field 'id' must be an integer or a string, got {_short(record['id'])}")
    where = f"{where} (id {record['id']!r})"
    if record["id"] in first:
        raise ValueError(f"{where}: field 'id' repeats the id of {kind}[{first[record['id']]}]; "
                         f"{noun} ids must be unique")
    first[record["id"]] = position
    return record, where


def _coco_image_records(coco: Mapping[str, Any], path: str) -> list[_ImageRecord]:
    records: list[_ImageRecord] = []
    first: dict[Any, int] = {}
    for position, image in enumerate(coco["images"]):
        image, where = _unique_record(image, position, f"{path}: images[{position}]", first, "images", "image")
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: field 'file_name' must be a non-empty path, got {_short(name)}")
        size = {}
        for key in ("width", "height"):
            value = image.get(key)
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(f"{where}: field {key!r} must be a positive number, got {_short(value)}")
            size[key] = value
        sha = image.get("sha256")
        if sha is not None and not isinstance(sha, str):
            raise ValueError(f"{where}: field 'sha256' must be a string, got {_short(sha)}")
        records.append(_ImageRecord(position, image["id"], name, size["width"], size["height"], sha or None, where))
    return records


def _categories(coco: Mapping[str, Any], path: str) -> dict[Any, str]:
    names: dict[Any, str] = {}
    first: dict[Any, int] = {}
    for position, category in enumerate(coco["categories"]):
        category, where = _unique_record(category, position, f"{path}: categories[{position}]", first, "categories",
                                         "category")
        name = category.get("name")
        if not isinstance(name, str) or not visible(name):
            raise ValueError(f"{where}: field 'name' must be a non-empty string, got {_short(name)}")
        names[category["id"]] = name.strip()
    return names


def _scene_object(annotation: Mapping[str, Any], position: int, where: str, shape: str,
                  sizes: Sequence[tuple[float, float, str]]) -> SceneObject:
    bbox = annotation["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(value) for value in bbox):
        raise ValueError(f"{where}: field 'bbox' must be 4 numbers [x, y, width, height], got {_short(bbox)}")
    x, y, w, h = (float(value) for value in bbox)
    if not (w > 0 and h > 0):
        raise ValueError(f"{where}: field 'bbox' {bbox!r} must have a positive width and height")
    for width, height, what in sizes:
        if (x < -BBOX_TOLERANCE or y < -BBOX_TOLERANCE or x + w > width + BBOX_TOLERANCE
                or y + h > height + BBOX_TOLERANCE):
            raise ValueError(f"{where}: field 'bbox' {bbox!r} lies outside the image ({what} {width:g}x{height:g}, "
                             f"{BBOX_TOLERANCE:g} px tolerance)")
    identifier = annotation.get("id", position)
    if not isinstance(identifier, int) or isinstance(identifier, bool):
        raise ValueError(f"{where}: field 'id' must be an integer, got {_short(identifier)}")
    crowd = annotation.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        raise ValueError(f"{where}: field 'iscrowd' must be 0 or 1, got {_short(crowd)}")
    attributes = annotation.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise ValueError(f"{where}: field 'attributes' must be an object, got {json_type(attributes)}")
    for key, kind in (("colour", str), ("size", str), ("row", int), ("col", int)):
        value = attributes.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{where}: field 'attributes.{key}' must be a {kind.__name__}, got {_short(value)}")
    return SceneObject(id=identifier, shape=shape, bbox=(x, y, w, h), colour=attributes.get("colour"),
                       size=attributes.get("size"), row=attributes.get("row"), col=attributes.get("col"),
                       crowd=bool(crowd))


def _stored(record: _ImageRecord, root: str | os.PathLike, index: StoreIndex) -> StoredImage:
    stored = index.lookup(inside(root, record.file_name, record.image_where), record.image_where)
    declared = (record.width, record.height)
    if None not in declared and (declared[0] != stored.width or declared[1] != stored.height):
        raise ValueError(f"{record.where}: fields 'width' x 'height' declare {declared[0]:g}x{declared[1]:g}, "
                         f"but the image file {record.file_name!r} is {stored.width}x{stored.height}"
                         + (f" once stored ({stored.converted})" if stored.converted else ""))
    if record.sha256 and not stored.converted and record.sha256 != stored.sha256:
        raise ValueError(f"{record.where}: field 'sha256' {record.sha256} is not the sha256 of the image file "
                         f"{record.file_name!r} ({stored.sha256}): the file changed since the JSON was written")
    return stored


def _declared_size(record: _ImageRecord) -> list[tuple[float, float, str]]:
    if record.width is None or record.height is None:
        return []
    return [(record.width, record.height, f"images[{record.position}] declares")]


def _objects(coco: Mapping[str, Any], path: str, records: Sequence[_ImageRecord], names: Mapping[Any, str],
             sizes: Callable[[_ImageRecord], list[tuple[float, float, str]]]) -> dict[Any, list[SceneObject]]:
    """{image id: [SceneObject, ...]} of every image (an empty list without annotations), each
    annotation checked; a box must lie inside each of `sizes(record)`."""
    by_id = {record.id: record for record in records}
    objects: dict[Any, list[SceneObject]] = {record.id: [] for record in records}
    for position, annotation in enumerate(coco["annotations"]):
        where = f"{path}: annotations[{position}]"
        annotation = _record_object(annotation, where)
        where = f"{where} (id {annotation.get('id')!r})"
        for name in ("image_id", "category_id", "bbox"):
            if name not in annotation:
                raise ValueError(f"{where} has no {name!r} field")
        image_id = annotation["image_id"]
        if not _is_id(image_id) or image_id not in by_id:
            raise ValueError(f"{where}: field 'image_id' {image_id!r} is not the id of an image in 'images'")
        if not _is_id(annotation["category_id"]) or annotation["category_id"] not in names:
            raise ValueError(f"{where}: field 'category_id' {annotation['category_id']!r} is not the id of a "
                             f"category in 'categories'")
        objects[image_id].append(_scene_object(annotation, position, where, names[annotation["category_id"]],
                                               sizes(by_id[image_id])))
    return objects


def image_key(image: Mapping[str, Any]) -> str:
    """How `coco_objects` keys an image: its `sha256` or, without one, its id as text."""
    return str(image.get("sha256") or image["id"])


def coco_objects(coco: Mapping[str, Any], source: str = "instances") -> dict[str, list[SceneObject]]:
    """{image key: [SceneObject, ...]} of a COCO instances dict whose images are not looked up in
    the store: the embedded world's own files, which name each image's sha256 (so rows, which
    carry `image_sha256`, find their objects). Checked as `read_coco` checks, boxes against the
    declared sizes. Errors name `source`, the record and the field."""
    coco = _coco_shape(coco, source)
    records = _coco_image_records(coco, source)
    objects = _objects(coco, source, records, _categories(coco, source), _declared_size)
    return {image_key(image): objects[image["id"]] for image in coco["images"]}


def read_coco(source: CocoSource | PoolConfig, data_root: str | os.PathLike, index: StoreIndex, *,
              max_text_chars: int | None = None, unusable: str | None = None) -> CocoData:
    """The images of a COCO instances file (+ the source's captions file), checked.

    Each image is found in the store by its `file_name` under the source's `image_folder`
    (default: `data_root`). `unusable` ("skip" or "error", params `curate.unusable`) decides
    what happens to an image with no annotation and no caption; None keeps it (the pool).
    A second record of an image already read (the same stored sha256) is skipped and counted."""
    if unusable is not None and unusable not in UNUSABLE:
        raise ValueError(f"unusable must be one of {', '.join(UNUSABLE)}, got {unusable!r}")
    path = str(source.instances)
    coco = _coco_shape(read_json_file(path), path)
    records = _coco_image_records(coco, path)
    names = _categories(coco, path)
    root = source.image_folder or data_root
    stored = {record.id: _stored(record, root, index) for record in records}

    def sizes(record: _ImageRecord) -> list[tuple[float, float, str]]:
        image = stored[record.id]
        return [*_declared_size(record), (image.width, image.height, "image file")]

    objects = _objects(coco, path, records, names, sizes)

    captions_file = getattr(source, "captions", None)
    captions = (_captions(str(captions_file), records, max_text_chars) if captions_file else {})
    data = CocoData(source=path, captions_file=str(captions_file) if captions_file else None, images=[],
                    vocabulary=list(names.values()))
    seen: dict[str, int] = {}
    for record in records:
        image = stored[record.id]
        if image.sha256 in seen:
            data.skipped[SAME_IMAGE] = data.skipped.get(SAME_IMAGE, 0) + 1
            continue
        if unusable and not objects[record.id] and not captions.get(record.id):
            if unusable == "error":
                raise ValueError(f"{record.where}: has no annotation and no caption (curate.unusable is 'error'; "
                                 f"'skip' leaves such images out)")
            data.skipped[NO_CONTENT] = data.skipped.get(NO_CONTENT, 0) + 1
            continue
        seen[image.sha256] = record.position
        data.images.append(CocoImage(id=record.id, position=record.position, file_name=record.file_name,
                                     stored=image, objects=objects[record.id],
                                     captions=captions.get(record.id, [])))
    return data


def _captions(path: str, records: Sequence[_ImageRecord], max_text_chars: int | None) -> dict[Any, list[str]]:
    """{instances image id: [caption, ...]} (distinct, file order). When the captions file lists its
    images, they are matched to the instances' by sha256 or file_name; else by id."""
    coco = expect_object(read_json_file(path), path, "a COCO captions object with an 'annotations' list")
    rows = coco.get("annotations")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: COCO captions has no 'annotations' list")
    ids = {record.id for record in records}
    translate: dict[Any, Any] | None = None
    if coco.get("images") is not None:
        images = expect_list(coco["images"], f"{path}: field 'images'", "a list")
        by_identity: dict[tuple[str, str], Any] = {}
        for record in records:
            for key, value in (("sha256", record.sha256), ("file_name", record.file_name)):
                if value:
                    by_identity.setdefault((key, value), record.id)
        translate = {}
        for position, image in enumerate(images):
            where = f"{path}: images[{position}]"
            image = _record_object(image, where)
            if "id" not in image or not _is_id(image["id"]):
                raise ValueError(f"{where}: field 'id' must be an integer or a string, got {_short(image.get('id'))}")
            for key in ("sha256", "file_name"):
                if (key, image.get(key)) in by_identity:
                    translate[image["id"]] = by_identity[(key, image[key])]
                    break
    result: dict[Any, list[str]] = {}
    for position, row in enumerate(rows):
        where = f"{path}: annotations[{position}]"
        row = _record_object(row, where)
        where = f"{where} (id {row.get('id')!r})"
        for name in ("image_id", "caption"):
            if name not in row:
                raise ValueError(f"{where} has no {name!r} field")
        caption = check_text(row["caption"], where, "caption", max_text_chars)
        key = row["image_id"] if _is_id(row["image_id"]) else None
        image_id = key if translate is None else translate.get(key)
        if image_id not in ids:
            matched = "by sha256 or file_name through its 'images'" if translate is not None else "by id"
            raise ValueError(f"{where}: field 'image_id' {row['image_id']!r} matches no image of the instances "
                             f"file ({matched})")
        captions = result.setdefault(image_id, [])
        if caption not in captions:
            captions.append(caption)
    return result


# ---------------------------------------------------------------- LLaVA and ShareGPT

@dataclass
class Conversation:
    """The records of one image, merged: their turns in file order."""

    stored: StoredImage
    turns: list[dict[str, str]]
    ids: list[Any]  # each record's `id` (None where it has none)
    records: list[int]  # each record's position in the file


@dataclass
class ConversationData:
    source: str
    kind: str
    records: int
    conversations: list[Conversation]  # in the order of each image's first record
    merged: int = 0  # records appended to an earlier record's conversation
    skipped: dict[str, int] = field(default_factory=dict)


def _record_where(path: str, index: int, record: Any) -> str:
    where = f"{path}: record {index}"
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} must be an object, got {json_type(record)}")
    return f"{where} (id {record['id']!r})" if "id" in record else where


def _record_image(record: Mapping[str, Any], kind: str, where: str) -> tuple[str, str]:
    """(image name, where it is named): exactly one image per record."""
    fields = ("image",) if kind == "llava" else tuple(name for name in ("images", "image") if name in record)
    if kind != "llava" and len(fields) != 1:
        raise ValueError(f"{where}: needs exactly one of the fields 'images' (a list of one path) or 'image'"
                         + (", not both" if fields else ""))
    name = fields[0]
    value = record.get(name)
    if name == "images":
        if not isinstance(value, list) or len(value) != 1:
            count = f"{len(value)} images" if isinstance(value, list) else json_type(value)
            raise ValueError(f"{where}: field 'images' must list exactly one image path, got {count} "
                             f"(multi-image records are not supported)")
        value, at = value[0], f"{where}: field 'images'[0]"
    else:
        at = f"{where}: field 'image'"
    if not isinstance(value, str) or not value:
        raise ValueError(f"{at} must be a non-empty path, got {_short(value)}")
    return value, at


def _record_turns(record: Mapping[str, Any], kind: str, where: str, max_text_chars: int | None
                  ) -> list[dict[str, str]]:
    """The record's turns as {role, content}, `<image>` removed, checked."""
    forms = [("conversations", "from", "value", LLAVA_FROM)]
    if kind == "sharegpt":
        forms.insert(0, ("messages", "role", "content", SHAREGPT_ROLES))
    present = [form for form in forms if form[0] in record]
    if len(present) != 1:
        names = " or ".join(repr(form[0]) for form in forms)
        raise ValueError(f"{where}: needs {'one of the fields ' if len(forms) > 1 else 'the field '}{names}"
                         + (", not both" if present else ""))
    name, role_key, text_key, roles = present[0]
    turns = record[name]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: field {name!r} must be a non-empty list of turns, got {_short(turns)}")
    result: list[dict[str, str]] = []
    tokens: list[int] = []
    for position, turn in enumerate(turns):
        at = f"{where}: field '{name}[{position}]'"
        if not isinstance(turn, Mapping):
            raise ValueError(f"{at} must be an object {{{role_key}, {text_key}}}, got {json_type(turn)}")
        role = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise ValueError(f"{at}: field {role_key!r} must be one of {', '.join(roles)}, "
                             f"got {_short(turn.get(role_key))}")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise ValueError(f"{at}: field {text_key!r} must be a string, got {json_type(text)}")
        count = text.count(IMAGE_TOKEN)
        if count and role != "user":
            raise ValueError(f"{at}: field {text_key!r} holds {IMAGE_TOKEN!r} in the {role}'s turn; "
                             f"the image belongs to a user turn")
        tokens += [position] * count
        content = check_text(IMAGE_PLACEHOLDER.sub(" ", text), at, text_key, max_text_chars)
        result.append({"role": role, "content": content})
    if len(tokens) != 1:
        raise ValueError(f"{where}: field {name!r} has {len(tokens)} {IMAGE_TOKEN!r} tokens, needs exactly one "
                         + ("(multi-image records are not supported)" if tokens else
                            "(where the image goes; text-only records are not supported)"))
    dialogue = result[1:] if result[0]["role"] == "system" else result
    for position, turn in enumerate(dialogue):
        expected = "user" if position % 2 == 0 else "assistant"
        if turn["role"] != expected:
            at = position + len(result) - len(dialogue)
            raise ValueError(f"{where}: field '{name}[{at}]' has role {turn['role']!r} where {expected!r} "
                             f"belongs: turns alternate user/assistant (a system turn may lead)")
    if not dialogue or dialogue[-1]["role"] != "assistant":
        raise ValueError(f"{where}: field {name!r} ends on a {result[-1]['role']} turn; it must end on an "
                         f"assistant answer")
    return result


def read_conversations(source: LlavaSource, data_root: str | os.PathLike, index: StoreIndex, *,
                       max_text_chars: int | None = None) -> ConversationData:
    """The records of a LLaVA or ShareGPT file, one `Conversation` per image.

    Records of the same stored image are merged in file order: a later record's turns follow the
    earlier ones' (its system turn, when it has one, must equal the first record's and is dropped);
    a record whose turns repeat an earlier record of that image is skipped and counted."""
    path = str(source.path)
    records = expect_list(read_json_file(path), path)
    data = ConversationData(source=path, kind=source.kind, records=len(records), conversations=[])
    by_sha: dict[str, Conversation] = {}
    seen_turns: dict[str, list[list[dict[str, str]]]] = {}
    for position, record in enumerate(records):
        where = _record_where(path, position, record)
        name, image_where = _record_image(record, source.kind, where)
        turns = _record_turns(record, source.kind, where, max_text_chars)
        stored = index.lookup(inside(source.image_folder, name, image_where), image_where)
        conversation = by_sha.get(stored.sha256)
        if conversation is None:
            by_sha[stored.sha256] = Conversation(stored, list(turns), [record.get("id")], [position])
            data.conversations.append(by_sha[stored.sha256])
            seen_turns[stored.sha256] = [turns]
            continue
        if turns in seen_turns[stored.sha256]:
            data.skipped[DUPLICATE_RECORD] = data.skipped.get(DUPLICATE_RECORD, 0) + 1
            continue
        seen_turns[stored.sha256].append(turns)
        if turns[0]["role"] == "system":
            lead = conversation.turns[0]
            if lead["role"] != "system" or lead["content"] != turns[0]["content"]:
                raise ValueError(f"{where}: its system turn differs from that of record "
                                 f"{conversation.records[0]}, which shows the same image; records of one "
                                 f"image merge into one conversation, which has one system turn")
            turns = turns[1:]
        conversation.turns += turns
        conversation.ids.append(record.get("id"))
        conversation.records.append(position)
        data.merged += 1
    return data


# ---------------------------------------------------------------- the pool

def pool_images(pool: PoolConfig, data_root: str | os.PathLike, index: StoreIndex) -> list[dict[str, str]]:
    """One {image, image_sha256} per distinct stored image of the pool, in file (or path) order."""
    if pool.kind == "coco":
        data = read_coco(pool, data_root, index)
        images = [image.stored for image in data.images]
        what = f"{pool.instances}: the unlabeled pool"
    else:
        images = [index.lookup(ref.path, ref.where) for ref in image_references(pool, data_root)]
        what = f"{pool.image_folder}: the unlabeled pool (pool.image_folder)"
    result, seen = [], set()
    for stored in images:
        if stored.sha256 not in seen:
            seen.add(stored.sha256)
            result.append({"image": stored.path, "image_sha256": stored.sha256})
    if not result:
        raise ValueError(f"{what} has no images")
    return result


def pool_annotations(pool: PoolConfig, data_root: str | os.PathLike, index: StoreIndex
                     ) -> tuple[dict[str, list[SceneObject]], list[str]]:
    """({stored sha256: [SceneObject, ...]}, category names) of a COCO pool, for the annotations
    teacher and answer verification."""
    if pool.kind != "coco":
        raise ValueError(f"pool.kind is {pool.kind!r}: the annotations teacher (generate.backend 'annotations') "
                         f"writes questions from annotations and needs an annotated pool (pool.kind 'coco' with "
                         f"pool.instances); use generate.backend 'openai' for an image folder")
    data = read_coco(pool, data_root, index)
    return {image.stored.sha256: image.objects for image in data.images}, data.vocabulary

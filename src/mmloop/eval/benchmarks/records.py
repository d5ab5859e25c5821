"""Reading benchmark records, shared by the format modules: JSON / JSONL / TSV records,
image files and base64 image cells, and field checks whose errors name the file, the record
and the field."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.io import sha256_bytes
from mmloop.questions import YES_NO
from mmloop.schema import OPTION_LETTERS

# Hint cells that mean "no hint" (an empty cell, or a NaN written out as text), compared lower-cased.
NULL_HINTS = ("", "nan")


class ImageFiles:
    """Reads image files once each (by resolved path), with errors naming the record."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[bytes, str]] = {}

    def read(self, file: str | os.PathLike, where: str, field: str) -> tuple[bytes, str]:
        key = os.path.abspath(file)
        if key not in self._cache:
            try:
                data = Path(file).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise FileNotFoundError(f"{where}: field {field!r}: image file {str(file)!r} not found") from None
            self._cache[key] = (data, sha256_bytes(data))
        return self._cache[key]


def load_json(path: Path, *, jsonl: bool) -> tuple[Any, list[tuple[int, Any]] | None]:
    """(data, None) for a JSON document, or (None, [(line number, record), ...]) for JSONL.
    A `.json` file holding JSON lines (POPE's files) reads as JSONL."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark file not found") from None
    if not jsonl:
        try:
            return json.loads(text), None
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":
                raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): "
                                 f"{err.msg}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: not valid JSON (column {err.colno}): {err.msg}") from None
    return None, lines


def read_records(path: Path, *, jsonl: bool | None = None) -> list[tuple[str, Mapping[str, Any]]]:
    """[(label, record)]: "line N" for JSONL, "record N" for a JSON list; each a JSON object."""
    if jsonl is None:
        jsonl = path.suffix.lower() == ".jsonl"
    data, lines = load_json(path, jsonl=jsonl)
    if lines is not None:
        labelled = [(f"line {number}", record) for number, record in lines]
    elif isinstance(data, list):
        labelled = [(f"record {position}", record) for position, record in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected a list of records (a JSON list or JSON lines), "
                         f"got a JSON {type(data).__name__}")
    for label, record in labelled:
        if not isinstance(record, Mapping):
            raise ValueError(f"{path}: {label}: expected a JSON object, got {type(record).__name__}")
    return labelled


def read_tsv(path: Path):
    """A TSV as text cells: no "NA"/"None"/"nan" turned into NaN."""
    import pandas as pd

    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark TSV not found") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file, not a benchmark TSV") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a readable TSV: {err}") from None


def record_location(path: Path, label: str, record: Mapping[str, Any], key: str) -> str:
    """"file: label (key 'value')", the prefix of every error about the record."""
    value = record.get(key)
    return f"{path}: {label}" if value is None else f"{path}: {label} ({key} {str(value)!r})"


def identifier(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        what = "missing" if value is None else f"not an id: {value!r}"
        raise ValueError(f"{where}: field {name!r} is {what}")
    return str(value).strip()


def required_text(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if value is None:
        raise ValueError(f"{where}: field {name!r} is missing")
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {value!r}")
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value.strip()


def optional_hint(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return None if text.lower() in NULL_HINTS else text


def option_list(values: Sequence[str], where: str, field: str) -> list[str]:
    options = [value.strip() for value in values]
    if len(options) < 2 or len(options) > len(OPTION_LETTERS) or not all(options):
        raise ValueError(f"{where}: field {field!r}: options must be 2 to {len(OPTION_LETTERS)} non-empty "
                         f"strings, got {list(values)!r}")
    return options


def lettered_options(cells: Sequence[str], where: str, names: Sequence[str] = OPTION_LETTERS) -> list[str]:
    """The option cells A.. with trailing empty ones dropped; a gap or fewer than two is an error.
    `names` are the cells' field names (MMBench's columns A.., SEED-Bench's choice_a..)."""
    options = list(cells)
    while options and not options[-1]:
        options.pop()
    if "" in options:
        gap = names[options.index("")]
        raise ValueError(f"{where}: field {gap!r} is empty but a later option is not (options must be 2 or "
                         f"more non-empty fields from {names[0]!r} on without gaps, got {options!r})")
    if len(options) < 2:
        raise ValueError(f"{where}: fields {'/'.join(names[:max(len(cells), 2)])}: options must be "
                         f"2 or more non-empty fields from {names[0]!r} on without gaps, got {options!r}")
    return options


def yes_no_answer(value: Any, where: str, field: str, why: str = "") -> str:
    answer = value.strip().lower() if isinstance(value, str) else None
    if answer not in YES_NO:
        raise ValueError(f"{where}: field {field!r}: {value!r} is not yes or no{why}")
    return answer


def decode_image_cell(cell: str, images_by_index: Mapping[str, str], where: str,
                      decoded: dict[str, tuple[bytes, str]] | None = None,
                      own_index: str | None = None) -> tuple[bytes, str]:
    """(bytes, sha256) of a base64 `image` cell; `decoded` caches by the index of the row the
    image lives in (`own_index` for a row holding its own image)."""
    cell = cell.strip()
    key = own_index
    # MMBench stores each image once; other rows of the same image hold that row's index.
    if cell.isdigit() and cell in images_by_index and not images_by_index[cell].strip().isdigit():
        key, cell = cell, images_by_index[cell].strip()
    if decoded is not None and key is not None and key in decoded:
        return decoded[key]
    if not cell:
        raise ValueError(f"{where}: field 'image' is empty")
    try:
        data = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{where}: field 'image' is not valid base64 ({err})") from None
    result = (data, sha256_bytes(data))
    if decoded is not None and key is not None:
        decoded[key] = result
    return result


def check_unique(items: Iterable[Mapping[str, Any]], wheres: Sequence[str], labels: Sequence[str],
                 field: str) -> None:
    """A repeated index is an error naming both records."""
    first: dict[str, str] = {}
    for item, where, label in zip(items, wheres, labels):
        if item["index"] in first:
            raise ValueError(f"{where}: field {field!r}: {item['index']!r} repeats {first[item['index']]}")
        first[item["index"]] = label

"""Every supported benchmark format, read into the benchmark-item schema.

Each reader returns a list of `schema.bench_item` dicts in file order (see
`schema.BENCH_ITEM_FIELDS`): index (unique, str), question, hint, answer_type ("mcq"
with lettered options and a letter answer, or "yes_no" with no options and "yes"/"no"),
options, answer, category, l2_category, image (the file's bytes), image_sha256, group
(items scored together) and direct_answers.

| format      | reader           | file                                                        |
|-------------|------------------|-------------------------------------------------------------|
| `mmbench`   | `read_mmbench`   | MMBench TSV (VLMEvalKit's, circular copies included)        |
| `aokvqa`    | `read_aokvqa`    | A-OKVQA JSON, images from a COCO folder                     |
| `pope`      | `read_pope`      | POPE JSONL (or a JSON list)                                 |
| `mme`       | `read_mme`       | MME's release folder, or a TSV/JSON/JSONL table             |
| `seedbench` | `read_seedbench` | SEED-Bench JSON (image items only)                          |
| `jsonl`     | `read_jsonl`     | plain JSONL: question, options, answer, category, image     |

`load_benchmark` picks the reader by name or guesses it from the path.

Errors name the benchmark file, the record (TSV row, JSON record, JSONL line, with its
index or question id) and the field. A missing image file is a FileNotFoundError naming
the benchmark file, the record and the image path. Each image file is read once however
many items share it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.io import sha256_bytes
from mmloop.schema import BENCH_ITEM_FIELDS, OPTION_LETTERS, bench_item

FORMATS = ("mmbench", "aokvqa", "pope", "mme", "seedbench", "jsonl")

# MMBench's standard columns; REQUIRED must be present in every MMBench TSV.
MMBENCH_COLUMNS = ("index", "question", "hint", *OPTION_LETTERS, "answer", "category", "l2-category",
                   "l2_category", "image")
REQUIRED = ("index", "question", "A", "B", "answer", "category", "image")
# Hint cells that mean "no hint" (an empty cell, or a NaN written out as text), compared lower-cased.
NULL_HINTS = ("", "nan")
# VLMEvalKit's circular MMBench: copy k of question i (options rotated) has index i + k * 1e6.
CIRCULAR_OFFSET = 1_000_000
# MME's subtasks scored under "cognition"; every other subtask is "perception".
MME_COGNITION = frozenset({"commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"})
# MME's two layouts per subtask: images/ + questions_answers_YN/, or images beside same-stem .txt files.
MME_IMAGES, MME_QUESTIONS = "images", "questions_answers_YN"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
POPE_SPLITS = ("adversarial", "popular", "random")
YES_NO = ("yes", "no")


# ---------------------------------------------------------------- dispatch

def load_benchmark(path: str | os.PathLike, format: str | None = None, *,
                   image_dir: str | os.PathLike | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Benchmark items of `path` in `format` (one of FORMATS), guessed from the path when None.

    Guessing: a directory is MME's release folder; `.tsv` is MMBench unless its header has
    no A/B columns but has question and answer (then an MME table); `.json`/`.jsonl` look at
    the content: a dict with `questions` is SEED-Bench, records with `choices` A-OKVQA,
    records with `label` and `text` POPE, other JSONL records plain JSONL.

    `image_dir` is where A-OKVQA, POPE, SEED-Bench and JSONL image paths are relative to
    (default: the benchmark file's folder); MMBench embeds its images and takes none.
    Other keyword arguments go to the reader (e.g. `category=` for POPE).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    if format is None:
        format = guess_format(path)
    if format not in FORMATS:
        raise ValueError(f"{path}: unknown benchmark format {format!r}; the formats are {', '.join(FORMATS)}")
    if format == "mmbench":
        if image_dir is not None:
            raise ValueError(f"{path}: MMBench TSVs embed their images; image_dir is not used")
        return read_mmbench(path, **kwargs)
    if format == "mme":
        return read_mme(path, image_dir=image_dir, **kwargs)
    folder = path.parent if image_dir is None else image_dir
    readers: dict[str, Callable[..., list[dict[str, Any]]]] = {
        "aokvqa": read_aokvqa, "pope": read_pope, "seedbench": read_seedbench, "jsonl": read_jsonl}
    return readers[format](path, folder, **kwargs)


def guess_format(path: str | os.PathLike) -> str:
    """The FORMATS name a file or folder looks like; ValueError listing the formats when unsure."""
    path = Path(path)

    def unsure(why: str) -> ValueError:
        return ValueError(f"{path}: cannot tell the benchmark format ({why}); pass format= one of "
                          f"{', '.join(FORMATS)}")

    if path.is_dir():
        return "mme"
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = [name.strip() for name in handle.readline().rstrip("\r\n").split("\t")]
        if "A" not in header and "B" not in header and {"question", "answer"} <= set(header):
            return "mme"
        return "mmbench"
    if suffix not in (".json", ".jsonl"):
        raise unsure(f"suffix {suffix or '(none)'!r} is none of .tsv, .json, .jsonl and it is not a folder")
    data, lines = _load_json(path, jsonl=suffix == ".jsonl")
    if lines is not None:
        first = lines[0][1] if lines else None
    elif isinstance(data, Mapping):
        if "questions" in data:
            return "seedbench"
        raise unsure("a JSON object without 'questions'")
    elif isinstance(data, list):
        first = data[0] if data else None
    else:
        raise unsure(f"JSON {type(data).__name__}, not a list of records")
    if not isinstance(first, Mapping):
        raise unsure("no records" if first is None else f"the first record is a {type(first).__name__}")
    if "choices" in first:
        return "aokvqa"
    if "label" in first and "text" in first:
        return "pope"
    if lines is not None:
        return "jsonl"
    raise unsure(f"the first record has none of 'choices' (aokvqa), 'label' and 'text' (pope); "
                 f"fields {sorted(first)}")


# ---------------------------------------------------------------- MMBench TSV

def read_mmbench(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Items of an MMBench TSV, in file order.

    options: the non-empty A.. columns in letter order (trailing empty columns dropped; an
    empty column between non-empty ones is an error); answer: a letter; hint: None when
    empty or NaN; l2_category from `l2-category` (None when absent or empty); group:
    `index % 1e6` for integer indexes (VLMEvalKit's circular copies share it), else None.
    MMBench's image de-duplication (an `image` cell holding another row's index) is
    resolved. Extra columns are kept under their own names. Rows count from 0.
    """
    path = Path(path)
    table = _read_tsv(path)
    missing = [column for column in REQUIRED if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(have {', '.join(map(repr, table.columns))})")
    letters = [column for column in OPTION_LETTERS if column in table.columns]
    extras = [column for column in table.columns if column not in MMBENCH_COLUMNS]
    l2_column = "l2-category" if "l2-category" in table.columns else "l2_category"
    rows = table.to_dict("records")
    images_by_index = {row["index"].strip(): row["image"] for row in rows}
    decoded: dict[str, tuple[bytes, str]] = {}

    items, wheres = [], []
    for position, row in enumerate(rows):
        index = row["index"].strip()
        where = f"{path}: row {position} (index {row['index']!r})"
        if not index:
            raise ValueError(f"{where}: field 'index' is empty")
        question = row["question"].strip()
        if not question:
            raise ValueError(f"{where}: field 'question' is empty")
        options = _lettered_options([row[column].strip() for column in letters], where)
        answer = row["answer"].strip()
        if answer not in letters[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {answer!r} is not among the non-empty options "
                             f"{', '.join(letters[:len(options)])}")
        category = row["category"].strip()
        if not category:
            raise ValueError(f"{where}: field 'category' is empty")
        image, sha = _decode_image(row["image"], images_by_index, where, decoded, index)
        fields = {column: row[column] for column in extras if column not in BENCH_ITEM_FIELDS}
        fields.update(index=index, question=question, hint=_hint(row.get("hint")), answer_type="mcq",
                      options=options, answer=answer, category=category,
                      l2_category=row.get(l2_column, "").strip() or None, image=image, image_sha256=sha,
                      group=str(int(index) % CIRCULAR_OFFSET) if index.isdigit() else None)
        items.append(bench_item(**fields))
        wheres.append(where)
    _check_unique(items, wheres, [f"row {position}" for position in range(len(items))], "index")
    return items


def _lettered_options(cells: Sequence[str], where: str, names: Sequence[str] = OPTION_LETTERS) -> list[str]:
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


def _decode_image(cell: str, images_by_index: Mapping[str, str], where: str,
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


def _read_tsv(path: Path):
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


def _hint(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return None if text.lower() in NULL_HINTS else text


# ---------------------------------------------------------------- A-OKVQA

# A-OKVQA marks questions whose ten direct answers disagree too much as
# `difficult_direct_answer`. The official evaluation (allenai/aokvqa,
# evaluation/eval_predictions.py `eval_aokvqa`) drops them only in the direct-answer
# setting: `if multiple_choice is False: dataset = {... if v['difficult_direct_answer'] is False}`;
# multiple-choice accuracy counts every question. (An earlier revision of that file, and
# the aokvqa_utils.py copy, had the condition inverted; the later one above is the fix.)
# So the flag is kept on every item for a direct-answer scorer to filter on.

def read_aokvqa(path: str | os.PathLike, image_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Items of an A-OKVQA JSON file (a list of records), images from `image_dir`.

    index: question_id; options: choices; answer: the letter of correct_choice_idx;
    direct_answers: the ten free-form answers; category: the record's `category`, else
    "aokvqa". The image is the record's `image` or `file_name` under `image_dir`, else
    COCO 2017's `{image_id:012d}.jpg`. Extra fields: `difficult_direct_answer` (always;
    False when absent) and `rationales` (when present). A file without answers (the test
    split) is an error.
    """
    path, image_dir = Path(path), Path(image_dir)
    records = _records(path)
    images = _ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in records:
        where = _where(path, label, record, "question_id")
        index = _identifier(record, "question_id", where)
        question = _text(record, "question", where)
        choices = record.get("choices")
        if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
            raise ValueError(f"{where}: field 'choices' must be a list of strings, got {choices!r}")
        options = _option_list(choices, where, "choices")
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
        name = record.get("image") or record.get("file_name")
        field = "image" if record.get("image") else "file_name"
        if not name:
            image_id = record.get("image_id")
            if isinstance(image_id, str) and image_id.strip().isdigit():
                image_id = int(image_id)
            if isinstance(image_id, bool) or not isinstance(image_id, int):
                raise ValueError(f"{where}: field 'image_id' must be a COCO image id (an integer) when the "
                                 f"record has no 'image' or 'file_name', got {image_id!r}")
            name, field = f"{image_id:012d}.jpg", "image_id"
        image, sha = images.read(image_dir / str(name), where, field)
        extra = {"difficult_direct_answer": difficult}
        if record.get("rationales") is not None:
            extra["rationales"] = list(record["rationales"])
        category = record.get("category") or "aokvqa"
        items.append(bench_item(index=index, question=question, answer_type="mcq", options=options,
                                answer=OPTION_LETTERS[correct], category=str(category), image=image,
                                image_sha256=sha, direct_answers=direct, **extra))
        wheres.append(where)
        labels.append(label)
    _check_unique(items, wheres, labels, "question_id")
    return items


# ---------------------------------------------------------------- POPE

def read_pope(path: str | os.PathLike, image_dir: str | os.PathLike,
              category: str | None = None) -> list[dict[str, Any]]:
    """Items of a POPE file: JSONL (as POPE ships it, even under a `.json` name) or a JSON list
    of {question_id, image, text, label}.

    answer_type "yes_no", answer: the label lower-cased. category: `category`, else the
    record's `category`, else the POPE split named in the file name (adversarial, popular,
    random), else "pope".
    """
    path, image_dir = Path(path), Path(image_dir)
    records = _records(path)
    split = next((name for name in POPE_SPLITS if name in path.name.lower()), "pope")
    images = _ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in records:
        where = _where(path, label, record, "question_id")
        index = _identifier(record, "question_id", where)
        question = _text(record, "text", where)
        answer = _yes_no(record.get("label"), where, "label")
        image, sha = images.read(image_dir / _text(record, "image", where), where, "image")
        items.append(bench_item(index=index, question=question, answer_type="yes_no", options=[],
                                answer=answer, category=str(category or record.get("category") or split),
                                image=image, image_sha256=sha))
        wheres.append(where)
        labels.append(label)
    _check_unique(items, wheres, labels, "question_id")
    return items


# ---------------------------------------------------------------- MME

def read_mme(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items of MME: its release folder, or a table (TSV, JSON, JSONL).

    Folder: `path/<subtask>/` holding either `images/` + `questions_answers_YN/` or images
    beside same-stem `.txt` files; each `.txt` line is `question<TAB>Yes|No`. Table: fields
    image (base64 in a TSV, with MMBench-style de-duplication; a path relative to
    `image_dir`, default the table's folder, in JSON), question, answer, category, and
    optionally index and image_path (VLMEvalKit's MME.tsv).

    answer_type "yes_no"; category: the subtask; l2_category: "cognition" for MME_COGNITION,
    else "perception"; group: "<subtask>/<image>" (MME scores an image's two questions
    together for acc+).
    """
    path = Path(path)
    if path.is_dir():
        return _read_mme_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: MME folder or table not found")
    if path.suffix.lower() == ".tsv":
        return _read_mme_tsv(path)
    return _read_mme_records(path, Path(image_dir) if image_dir is not None else path.parent)


def mme_l2_category(subtask: str) -> str:
    return "cognition" if subtask.strip().lower().replace(" ", "_") in MME_COGNITION else "perception"


def _read_mme_folder(root: Path) -> list[dict[str, Any]]:
    images = _ImageFiles()
    items: list[dict[str, Any]] = []
    subtasks = 0
    for folder in sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")):
        qa_dir = folder / MME_QUESTIONS
        if qa_dir.is_dir():
            image_folder = folder / MME_IMAGES
        elif any(folder.glob("*.txt")):
            qa_dir = image_folder = folder
        else:
            continue  # not a subtask (MME's eval_tool, say)
        subtasks += 1
        subtask = folder.name
        by_stem = ({file.stem: file for file in sorted(image_folder.iterdir())
                    if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES}
                   if image_folder.is_dir() else {})
        for text_file in sorted(qa_dir.glob("*.txt")):
            image_file = by_stem.get(text_file.stem)
            if image_file is None:
                raise FileNotFoundError(f"{text_file}: field 'image': no image {text_file.stem}"
                                        f"{{{','.join(IMAGE_SUFFIXES)}}} in {image_folder}")
            k = 0
            for number, line in enumerate(text_file.read_text(encoding="utf-8-sig").splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{text_file}: line {number}"
                if "\t" not in line:
                    raise ValueError(f"{where}: expected 'question<TAB>answer', got {line.strip()!r}")
                question, answer = line.rsplit("\t", 1)
                if not question.strip():
                    raise ValueError(f"{where}: field 'question' is empty")
                image, sha = images.read(image_file, where, "image")
                items.append(bench_item(index=f"{subtask}/{text_file.stem}/{k}", question=question.strip(),
                                        answer_type="yes_no", options=[], answer=_yes_no(answer, where, "answer"),
                                        category=subtask, l2_category=mme_l2_category(subtask), image=image,
                                        image_sha256=sha, group=f"{subtask}/{image_file.name}"))
                k += 1
    if not subtasks:
        raise ValueError(f"{root}: no MME subtask folders (each <subtask>/ holds {MME_IMAGES}/ + "
                         f"{MME_QUESTIONS}/, or images beside same-stem .txt files)")
    return items


def _read_mme_tsv(path: Path) -> list[dict[str, Any]]:
    table = _read_tsv(path)
    missing = [column for column in ("image", "question", "answer", "category") if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(have {', '.join(map(repr, table.columns))})")
    rows = table.to_dict("records")
    has_index = "index" in table.columns
    images_by_index = {row["index"].strip(): row["image"] for row in rows} if has_index else {}
    decoded: dict[str, tuple[bytes, str]] = {}
    items, wheres, labels = [], [], []
    for position, row in enumerate(rows):
        index = row["index"].strip() if has_index else str(position)
        where = f"{path}: row {position} (index {index!r})"
        image, sha = _decode_image(row["image"], images_by_index, where, decoded, index if has_index else None)
        items.append(_mme_item(row, index, where, image, sha, row.get("image_path", "").strip() or sha[:16]))
        wheres.append(where)
        labels.append(f"row {position}")
    _check_unique(items, wheres, labels, "index")
    return items


def _read_mme_records(path: Path, image_dir: Path) -> list[dict[str, Any]]:
    images = _ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in _records(path):
        index = record.get("index")
        if index is None or index == "":
            index = label.split()[-1]
        where = _where(path, label, record, "index")
        name = _text(record, "image", where)
        image, sha = images.read(image_dir / name, where, "image")
        items.append(_mme_item(record, str(index), where, image, sha, str(record.get("image_path") or name)))
        wheres.append(where)
        labels.append(label)
    _check_unique(items, wheres, labels, "index")
    return items


def _mme_item(record: Mapping[str, Any], index: str, where: str, image: bytes, sha: str,
              image_name: str) -> dict[str, Any]:
    category = _text(record, "category", where)
    return bench_item(index=index, question=_text(record, "question", where), answer_type="yes_no", options=[],
                      answer=_yes_no(record.get("answer"), where, "answer"), category=category,
                      l2_category=mme_l2_category(category), image=image, image_sha256=sha,
                      group=f"{category}/{image_name}")


# ---------------------------------------------------------------- SEED-Bench

def read_seedbench(path: str | os.PathLike, image_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Image items of a SEED-Bench JSON file ({"questions": [...], "question_type": {name: id}}).

    index: question_id; options: choice_a.. in order; answer: a letter; category: the
    question type's name (str(question_type_id) when the map lacks it); image: `data_id`
    under `image_dir`. Items whose data_type is not "image" (SEED-Bench's video questions)
    are skipped, with a warning counting them.
    """
    path, image_dir = Path(path), Path(image_dir)
    data, lines = _load_json(path, jsonl=False)
    if lines is not None or not isinstance(data, Mapping) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{path}: field 'questions': a SEED-Bench file is a JSON object with a 'questions' list")
    type_map = data.get("question_type") or {}
    if not isinstance(type_map, Mapping):
        raise ValueError(f"{path}: field 'question_type' must map type names to ids, got {type_map!r}")
    type_names = {str(type_id): str(name) for name, type_id in type_map.items()}
    images = _ImageFiles()
    skipped: Counter[str] = Counter()
    items, wheres, labels = [], [], []
    for position, record in enumerate(data["questions"]):
        label = f"questions[{position}]"
        if not isinstance(record, Mapping):
            raise ValueError(f"{path}: {label}: expected a JSON object, got {type(record).__name__}")
        where = _where(path, label, record, "question_id")
        data_type = record.get("data_type", "image")
        if data_type != "image":
            skipped[str(data_type)] += 1
            continue
        index = _identifier(record, "question_id", where)
        question = _text(record, "question", where)
        names = [f"choice_{letter.lower()}" for letter in OPTION_LETTERS]
        present = [position for position, name in enumerate(names) if name in record]
        cells = []
        for name in names[:present[-1] + 1 if present else 0]:
            value = record.get(name)
            if value is not None and not isinstance(value, (str, int, float)):
                raise ValueError(f"{where}: field {name!r} must be text, got {value!r}")
            cells.append("" if value is None else str(value).strip())
        options = _lettered_options(cells, where, names)
        answer = str(record.get("answer", "")).strip().upper()
        if answer not in OPTION_LETTERS[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {record.get('answer')!r} is not among the options "
                             f"{', '.join(OPTION_LETTERS[:len(options)])}")
        type_id = record.get("question_type_id")
        if type_id is None or type_id == "":
            raise ValueError(f"{where}: field 'question_type_id' is missing")
        image, sha = images.read(image_dir / _text(record, "data_id", where), where, "data_id")
        items.append(bench_item(index=index, question=question, answer_type="mcq", options=options, answer=answer,
                                category=type_names.get(str(type_id), str(type_id)), image=image, image_sha256=sha))
        wheres.append(where)
        labels.append(label)
    if skipped:
        counts = ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items()))
        warnings.warn(f"{path}: skipped {sum(skipped.values())} non-image SEED-Bench item(s) ({counts}); "
                      f"read {len(items)} image item(s)", stacklevel=2)
        if not items:
            raise ValueError(f"{path}: no image items (all {sum(skipped.values())} are {counts})")
    _check_unique(items, wheres, labels, "question_id")
    return items


# ---------------------------------------------------------------- plain JSONL

JSONL_FIELDS = ("index", "question", "hint", "options", "answer", "category", "l2_category", "group", "image")


def read_jsonl(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items of a plain JSONL file, one object per line: question, options (a list; empty or
    absent for a yes/no item), answer (a letter, or the text of one option, read as its
    letter; "yes"/"no" when there are no options), category, image (a path relative to
    `image_dir`, default the file's folder), and optionally index (default: the line
    number, from 1), hint, l2_category and group. Other fields are kept as extra columns.
    """
    path = Path(path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    images = _ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in _records(path, jsonl=True):
        where = _where(path, label, record, "index")
        index = record.get("index")
        index = label.split()[-1] if index is None or index == "" else _identifier(record, "index", where)
        question = _text(record, "question", where)
        raw_options = record.get("options") or []
        if not isinstance(raw_options, list) or not all(isinstance(option, str) for option in raw_options):
            raise ValueError(f"{where}: field 'options' must be a list of strings, got {raw_options!r}")
        if raw_options:
            options = _option_list(raw_options, where, "options")
            answer, answer_type = _answer_letter(record.get("answer"), options, where), "mcq"
        else:
            options, answer_type = [], "yes_no"
            answer = _yes_no(record.get("answer"), where, "answer",
                             why=" (an item without options is a yes/no item)")
        image, sha = images.read(image_dir / _text(record, "image", where), where, "image")
        group = record.get("group")
        fields = {key: value for key, value in record.items()
                  if key not in JSONL_FIELDS and key not in BENCH_ITEM_FIELDS}
        fields.update(index=index, question=question, hint=_hint(record.get("hint")), answer_type=answer_type,
                      options=options, answer=answer, category=_text(record, "category", where),
                      l2_category=record.get("l2_category") or None, image=image, image_sha256=sha,
                      group=None if group is None or group == "" else str(group))
        items.append(bench_item(**fields))
        wheres.append(where)
        labels.append(label)
    _check_unique(items, wheres, labels, "index")
    return items


def _answer_letter(answer: Any, options: Sequence[str], where: str) -> str:
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


# ---------------------------------------------------------------- shared helpers

class _ImageFiles:
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


def _load_json(path: Path, *, jsonl: bool) -> tuple[Any, list[tuple[int, Any]] | None]:
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


def _records(path: Path, *, jsonl: bool | None = None) -> list[tuple[str, Mapping[str, Any]]]:
    """[(label, record)]: "line N" for JSONL, "record N" for a JSON list; each a JSON object."""
    if jsonl is None:
        jsonl = path.suffix.lower() == ".jsonl"
    data, lines = _load_json(path, jsonl=jsonl)
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


def _where(path: Path, label: str, record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    return f"{path}: {label}" if value is None else f"{path}: {label} ({key} {str(value)!r})"


def _identifier(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        what = "missing" if value is None else f"not an id: {value!r}"
        raise ValueError(f"{where}: field {name!r} is {what}")
    return str(value).strip()


def _text(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if value is None:
        raise ValueError(f"{where}: field {name!r} is missing")
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {value!r}")
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value.strip()


def _option_list(values: Sequence[str], where: str, field: str) -> list[str]:
    options = [value.strip() for value in values]
    if len(options) < 2 or len(options) > len(OPTION_LETTERS) or not all(options):
        raise ValueError(f"{where}: field {field!r}: options must be 2 to {len(OPTION_LETTERS)} non-empty "
                         f"strings, got {list(values)!r}")
    return options


def _yes_no(value: Any, where: str, field: str, why: str = "") -> str:
    answer = value.strip().lower() if isinstance(value, str) else None
    if answer not in YES_NO:
        raise ValueError(f"{where}: field {field!r}: {value!r} is not yes or no{why}")
    return answer


def _check_unique(items: Iterable[Mapping[str, Any]], wheres: Sequence[str], labels: Sequence[str],
                  field: str) -> None:
    """A repeated index is an error naming both records."""
    first: dict[str, str] = {}
    for item, where, label in zip(items, wheres, labels):
        if item["index"] in first:
            raise ValueError(f"{where}: field {field!r}: {item['index']!r} repeats {first[item['index']]}")
        first[item["index"]] = label


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

"""MME: yes/no questions, two per image, from its release folder or a table (VLMEvalKit's TSV,
JSON, JSONL).

Prompt: lmms-eval mme/utils.py (MME's own "Please answer yes or no." dropped, then "Answer
the question using a single word or phrase."). Metric: acc, acc+ (both questions of an
image right) and score = acc + acc+ per subtask, with the perception and cognition sums.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks.records import (ImageFiles, check_unique, decode_image_cell, read_records, read_tsv,
                                            record_location, required_text, yes_no_answer)
from mmloop.eval.metrics import Row, label_or_none, groups, mean, nonempty, shared_label, yes_no_rows
from mmloop.eval.prompts import PromptConvention
from mmloop.schema import bench_item

CONVENTION = PromptConvention(name="mme", strip_from_question=("Please answer yes or no.",))
# MME's subtasks scored under "cognition"; every other subtask is "perception".
COGNITION = frozenset({"commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"})
SUPER_CATEGORIES = ("perception", "cognition")
# MME's two layouts per subtask: images/ + questions_answers_YN/, or images beside same-stem .txt files.
IMAGES_FOLDER, QUESTIONS_FOLDER = "images", "questions_answers_YN"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_mme(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items of MME: its release folder, or a table (TSV, JSON, JSONL).

    Folder: `path/<subtask>/` holding either `images/` + `questions_answers_YN/` or images
    beside same-stem `.txt` files; each `.txt` line is `question<TAB>Yes|No`. Table: fields
    image (base64 in a TSV, with MMBench-style de-duplication; a path relative to
    `image_dir`, default the table's folder, in JSON), question, answer, category, and
    optionally index and image_path (VLMEvalKit's MME.tsv).

    answer_type "yes_no"; category: the subtask; l2_category: "cognition" for COGNITION,
    else "perception"; group: "<subtask>/<image>" (MME scores an image's two questions
    together for acc+).
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: MME folder or table not found")
    if path.suffix.lower() == ".tsv":
        return _read_tsv(path)
    return _read_records(path, Path(image_dir) if image_dir is not None else path.parent)


def l2_category(subtask: str) -> str:
    return "cognition" if subtask.strip().lower().replace(" ", "_") in COGNITION else "perception"


def _read_folder(root: Path) -> list[dict[str, Any]]:
    images = ImageFiles()
    items: list[dict[str, Any]] = []
    subtasks = 0
    for folder in sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")):
        qa_dir = folder / QUESTIONS_FOLDER
        if qa_dir.is_dir():
            image_folder = folder / IMAGES_FOLDER
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
            items += _text_file_items(text_file, image_file, subtask, images)
    if not subtasks:
        raise ValueError(f"{root}: no MME subtask folders (each <subtask>/ holds {IMAGES_FOLDER}/ + "
                         f"{QUESTIONS_FOLDER}/, or images beside same-stem .txt files)")
    return items


def _text_file_items(text_file: Path, image_file: Path, subtask: str, images: ImageFiles) -> list[dict[str, Any]]:
    """The items of one image's `question<TAB>Yes|No` lines, indexed subtask/stem/k."""
    items = []
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
        items.append(bench_item(index=f"{subtask}/{text_file.stem}/{len(items)}", question=question.strip(),
                                answer_type="yes_no", options=[], answer=yes_no_answer(answer, where, "answer"),
                                category=subtask, l2_category=l2_category(subtask), image=image,
                                image_sha256=sha, group=f"{subtask}/{image_file.name}"))
    return items


def _read_tsv(path: Path) -> list[dict[str, Any]]:
    table = read_tsv(path)
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
        image, sha = decode_image_cell(row["image"], images_by_index, where, decoded, index if has_index else None)
        items.append(_item(row, index, where, image, sha, row.get("image_path", "").strip() or sha[:16]))
        wheres.append(where)
        labels.append(f"row {position}")
    check_unique(items, wheres, labels, "index")
    return items


def _read_records(path: Path, image_dir: Path) -> list[dict[str, Any]]:
    images = ImageFiles()
    items, wheres, labels = [], [], []
    for label, record in read_records(path):
        index = record.get("index")
        if index is None or index == "":
            index = label.split()[-1]
        where = record_location(path, label, record, "index")
        name = required_text(record, "image", where)
        image, sha = images.read(image_dir / name, where, "image")
        items.append(_item(record, str(index), where, image, sha, str(record.get("image_path") or name)))
        wheres.append(where)
        labels.append(label)
    check_unique(items, wheres, labels, "index")
    return items


def _item(record: Mapping[str, Any], index: str, where: str, image: bytes, sha: str,
          image_name: str) -> dict[str, Any]:
    category = required_text(record, "category", where)
    return bench_item(index=index, question=required_text(record, "question", where), answer_type="yes_no",
                      options=[], answer=yes_no_answer(record.get("answer"), where, "answer"), category=category,
                      l2_category=l2_category(category), image=image, image_sha256=sha,
                      group=f"{category}/{image_name}")


# ---------------------------------------------------------------- the MME scores

def mme(rows: Iterable[Row]) -> dict[str, Any]:
    """MME: {"subtasks": {category: {"acc", "acc_plus", "score", "n", "n_images", "l2_category"}},
    "perception", "cognition", "total"}. acc: % of questions right; acc_plus: % of images
    (groups) with every question right; score = acc + acc_plus (at most 200). "perception" /
    "cognition": the summed scores of the subtasks with that l2 category; "total": the sum over
    all subtasks. Every row needs a category."""
    rows = nonempty(rows, "mme")
    subtasks: dict[str, list[Row]] = {}
    for row in rows:
        category = label_or_none(row.get("category"))
        if category is None:
            raise ValueError(f"mme: prediction {row.get('item')!r} has no category (MME subtask)")
        subtasks.setdefault(category, []).append(row)
    result: dict[str, Any] = {"subtasks": {}}
    for category, members in sorted(subtasks.items()):
        l2 = shared_label(members, "l2_category", (members[0].get("benchmark"), category), "mme")
        images = groups(members)
        acc = 100.0 * mean([bool(row["correct"]) for row in members])
        acc_plus = 100.0 * mean([all(bool(row["correct"]) for row in image) for image in images.values()])
        result["subtasks"][category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                                        "n": len(members), "n_images": len(images), "l2_category": l2}
    for name in SUPER_CATEGORIES:
        result[name] = sum(entry["score"] for entry in result["subtasks"].values()
                           if (entry["l2_category"] or "").lower() == name)
    result["total"] = sum(entry["score"] for entry in result["subtasks"].values())
    return result


def metric_blocks(rows: list[Row]) -> dict[str, Any]:
    """{"mme": ...} over the yes_no rows, when there are some."""
    yes_no = yes_no_rows(rows)
    return {"mme": mme(yes_no)} if yes_no else {}

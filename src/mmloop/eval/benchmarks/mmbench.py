"""MMBench: the TSV (VLMEvalKit's, circular copies included), read and written.

Prompt: our MMBench prompt, VLMEvalKit's "Hint:"/"Options:" layout with LLaVA-1.5's letter
suffix (= `questions.mcq_prompt`). Metric: exact match and CircularEval, which every
benchmark gets; nothing of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmloop.eval.benchmarks.records import check_unique, decode_image_cell, lettered_options, optional_hint, read_tsv
from mmloop.eval.items import CIRCULAR_OFFSET
from mmloop.eval.prompts import PromptConvention
from mmloop.schema import BENCH_ITEM_FIELDS, OPTION_LETTERS, bench_item

# MMBench's columns, in its order; option columns beyond D are written when an item has them.
COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image")
# Present in every MMBench TSV.
REQUIRED = ("index", "question", "A", "B", "answer", "category", "image")
# Columns read into item fields; any other column is kept under its own name.
STANDARD_COLUMNS = frozenset((*COLUMNS, *OPTION_LETTERS, "l2_category"))

CONVENTION = PromptConvention(name="mmbench")


def read_mmbench(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items of an MMBench TSV, in file order. The images are in the file: `image_dir` must be None.

    options: the non-empty A.. columns in letter order (trailing empty columns dropped; an
    empty column between non-empty ones is an error); answer: a letter; hint: None when
    empty or NaN; l2_category from `l2-category` (None when absent or empty); group:
    `index % 1e6` for integer indexes (VLMEvalKit's circular copies share it), else None.
    MMBench's image de-duplication (an `image` cell holding another row's index) is
    resolved. Extra columns are kept under their own names. Rows count from 0.
    """
    path = Path(path)
    if image_dir is not None:
        raise ValueError(f"{path}: MMBench TSVs embed their images; image_dir is not used")
    table = read_tsv(path)
    missing = [column for column in REQUIRED if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(have {', '.join(map(repr, table.columns))})")
    letters = [column for column in OPTION_LETTERS if column in table.columns]
    extras = [column for column in table.columns if column not in STANDARD_COLUMNS]
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
        options = lettered_options([row[column].strip() for column in letters], where)
        answer = row["answer"].strip()
        if answer not in letters[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {answer!r} is not among the non-empty options "
                             f"{', '.join(letters[:len(options)])}")
        category = row["category"].strip()
        if not category:
            raise ValueError(f"{where}: field 'category' is empty")
        image, sha = decode_image_cell(row["image"], images_by_index, where, decoded, index)
        fields = {column: row[column] for column in extras if column not in BENCH_ITEM_FIELDS}
        fields.update(index=index, question=question, hint=optional_hint(row.get("hint")), answer_type="mcq",
                      options=options, answer=answer, category=category,
                      l2_category=row.get(l2_column, "").strip() or None, image=image, image_sha256=sha,
                      group=str(int(index) % CIRCULAR_OFFSET) if index.isdigit() else None)
        items.append(bench_item(**fields))
        wheres.append(where)
    check_unique(items, wheres, [f"row {position}" for position in range(len(items))], "index")
    return items


def write_mmbench(items: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write rows with MMBench's columns (options under A.., the image as base64) as a TSV,
    atomically. Missing option columns and a missing or None hint are written empty; other
    keys become extra columns after the standard ones. Returns the number of rows."""
    import csv
    import io

    from mmloop.io import write_text

    items = list(items)
    used = {column for column in OPTION_LETTERS if any(item.get(column) not in (None, "") for item in items)}
    before, after = COLUMNS[:COLUMNS.index("A")], COLUMNS[COLUMNS.index("answer"):]
    columns = [*before, *sorted(used | {"A", "B", "C", "D"}), *after]
    columns += list(dict.fromkeys(key for item in items for key in item if key not in columns))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for item in items:
        writer.writerow(["" if item.get(column) is None else item.get(column) for column in columns])
    write_text(path, buffer.getvalue())
    return len(items)

"""Generation: turn sampled queries into new training samples with a teacher.

The default teacher, `annotations`, is MLLM-DataEngine's text-only GPT-4 fed with
COCO captions and boxes, made exact: it reads the query image's annotations and
writes a question of the requested family with `questions.make_question`, so every
answer is correct by construction and re-executable (the question program is kept
in provenance for elimination to verify). `openai` sends the same queries to an
OpenAI-compatible model (mmloop.llm_teacher).

Formats follow params `generate.format_mix`: mcq rows use the MMBench prompt and a
reply naming the option (its letter or text, params answer_format); short rows ask the question alone
and answer with a full sentence.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.io import stable_hash
from mmloop.questions import L2_CATEGORY
from mmloop.schema import QUERY_FIELDS, letter, make_sample_id, require_fields, sample

BACKENDS = ("annotations", "openai")
FORMATS = ("mcq", "short")
DEFAULT_ANNOTATIONS = ("data/world/instances_pool.json",)


def load_objects(instances_paths: str | os.PathLike | Sequence[str | os.PathLike],
                 data_root: str | os.PathLike = "data") -> dict[str, list[Any]]:
    """{image sha256: the image's objects} from one or more COCO instances files."""
    from mmloop import questions
    from mmloop.io import read_json

    if isinstance(instances_paths, (str, os.PathLike)):
        instances_paths = [instances_paths]
    objects_by_sha: dict[str, list[Any]] = {}
    for path in instances_paths:
        coco = read_json(path)
        for sha, objects in questions.objects_by_image(coco, source=str(path)).items():
            objects_by_sha[sha] = objects
    return objects_by_sha


def draw_format(format_mix: Mapping[str, float], rng: random.Random) -> str:
    weights = {name: float(weight) for name, weight in (format_mix or {}).items() if float(weight) > 0}
    unknown = set(weights) - set(FORMATS)
    if unknown:
        raise ValueError(f"params.yaml: generate.format_mix has unknown format(s) {sorted(unknown)} "
                         f"(the annotations teacher writes {', '.join(FORMATS)})")
    if not weights:
        raise ValueError("params.yaml: generate.format_mix gives no format a positive weight")
    names = sorted(weights)
    return rng.choices(names, weights=[weights[name] for name in names])[0]


def annotation_rows(queries: Sequence[Mapping[str, Any]], objects_by_sha: Mapping[str, Sequence[Any]],
                    settings: Mapping[str, Any], *, seed: int, iteration: int | str
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The annotations teacher: one sample per query whose family can be asked on its image.

    Returns (rows, stats) with stats {category: {requested, generated, skipped}}.
    """
    from mmloop import questions

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    stats: dict[str, dict[str, int]] = {}
    for query in queries:
        query_id = query.get("sample_id")
        require_fields(query, QUERY_FIELDS, "queries")
        category = query["category"]
        entry = stats.setdefault(category, {"requested": 0, "generated": 0, "skipped": 0, "duplicate_id": 0})
        entry["requested"] += 1
        sha = query["image_sha256"]
        if sha not in objects_by_sha:
            raise KeyError(f"queries: record {query_id!r}: image {query['image']!r} (sha256 {sha}) is not in the "
                           f"annotations given to the annotations teacher")
        # Each query draws from its own seeded stream, so one skipped or reordered query does not
        # change what the others get.
        query_rng = random.Random(stable_hash(seed, query_id))
        row_format = draw_format(settings.get("format_mix") or {"mcq": 1.0}, query_rng)
        made = questions.make_question(category, objects_by_sha[sha], query_rng)
        if made is None:
            entry["skipped"] += 1
            continue
        row = question_row(made, query, row_format, iteration=iteration,
                           answer_format=settings.get("answer_format", "letter"))
        if row["sample_id"] in seen:
            # Two queries on the same image asked the same question: one sample.
            entry["duplicate_id"] += 1
            continue
        seen.add(row["sample_id"])
        rows.append(row)
        entry["generated"] += 1
    return rows, stats


def question_row(made: Any, query: Mapping[str, Any], row_format: str, *, iteration: int | str,
                 answer_format: str = "letter") -> dict[str, Any]:
    """A sample row from a questions.py question for a query."""
    from mmloop import questions

    conversations = questions.turns(made, row_format, answer_format)
    options = list(made.options) if row_format == "mcq" else []
    family = query["category"]
    return sample(
        sample_id=make_sample_id(query["image_sha256"], conversations, "generated", query["sample_id"]),
        parent_ids=[query["sample_id"]], iteration=int(iteration), origin="generated",
        image=query["image"], image_sha256=query["image_sha256"], conversations=conversations,
        category=family, format=row_format, question=made.question, options=options, answer=made.answer,
        provenance={"backend": "annotations", "prompt_id": f"annotations/{family}", "program": made.program,
                    "model": None},
    )


def generate(queries: Sequence[Mapping[str, Any]], params: Mapping[str, Any], *, iteration: int | str,
             data_root: str | os.PathLike = "data") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dispatch on params generate.backend. Returns (rows, metrics)."""
    from mmloop.params import stage_seed

    from mmloop.questions import check_answer_format

    settings = dict(params.get("generate") or {})
    # How mcq rows reply is one choice for the whole loop (params.yaml's top-level answer_format).
    settings["answer_format"] = check_answer_format(params.get("answer_format", "letter"))
    backend = settings.get("backend", "annotations")
    if backend not in BACKENDS:
        raise ValueError(f"params.yaml: generate.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    annotations = settings.get("annotations") or list(DEFAULT_ANNOTATIONS)
    objects_by_sha = load_objects(annotations, data_root)
    if backend == "annotations":
        rows, per_category = annotation_rows(queries, objects_by_sha, settings,
                                             seed=stage_seed(params, "generate", iteration), iteration=iteration)
        return rows, {"backend": backend, **totals(per_category), "categories": per_category}

    from mmloop import llm_teacher

    badcases = load_badcases(params, iteration, data_root)
    rows, stats = llm_teacher.generate(queries, badcases, objects_by_sha, settings, data_root=data_root,
                                       iteration=iteration)
    per_category: dict[str, dict[str, int]] = {}
    for query in queries:
        per_category.setdefault(query["category"], {"requested": 0, "generated": 0, "skipped": 0})["requested"] += 1
    for row in rows:
        entry = per_category.setdefault(row["category"], {"requested": 0, "generated": 0, "skipped": 0})
        entry["generated" if row.get("kept") is not False else "skipped"] += 1
    return rows, {**stats, **totals(per_category), "categories": per_category}


def totals(per_category: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    return {key: sum(entry.get(key, 0) for entry in per_category.values())
            for key in ("requested", "generated", "skipped")}


def load_badcases(params: Mapping[str, Any], iteration: int | str, data_root: str | os.PathLike) -> list[dict]:
    """The bad cases of the model this iteration starts from (the LLM teacher shows some in context)."""
    from mmloop.params import iteration as iteration_entry
    from mmloop.schema import read_samples

    previous = iteration_entry(params, str(iteration))["prev"]
    path = Path(data_root) / f"iter={previous}" / "eval" / "badcases.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bad cases of iteration {previous} not found; run evaluate {previous} first")
    return read_samples(path)


def mmbench_items(rows: Sequence[Mapping[str, Any]], *, data_root: str | os.PathLike = "data") -> list[dict[str, Any]]:
    """The mcq rows as MMBench items (index, question, hint, A.., answer letter, category,
    l2-category, image as base64 of the stored PNG bytes), so generated data can be benchmarked."""
    import base64

    items = []
    encoded: dict[str, str] = {}
    for index, row in enumerate(row for row in rows if row.get("format") == "mcq" and row.get("kept") is not False):
        options = list(row["options"])
        if row["image"] not in encoded:
            encoded[row["image"]] = base64.b64encode((Path(data_root) / row["image"]).read_bytes()).decode("ascii")
        item = {"index": index, "question": row["question"], "hint": None,
                "answer": letter(options.index(row["answer"])), "category": row["category"],
                "l2-category": L2_CATEGORY.get(row["category"], row["category"]), "image": encoded[row["image"]], "sample_id": row["sample_id"]}
        item.update({letter(position): option for position, option in enumerate(options)})
        items.append(item)
    return items

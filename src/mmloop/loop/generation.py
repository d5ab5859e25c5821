"""Generation: turn sampled queries into new training samples with a teacher.

The teacher is params `generate.backend`; both sit side by side in mmloop.teachers behind one
interface (teachers.base.Teacher: prompt, send, parse). `annotations`, the offline default,
writes correct-by-construction questions from the query image's annotations; `openai` sends
the queries, with the previous model's bad cases in context, to an OpenAI-compatible model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmloop.questions import L2_CATEGORY
from mmloop.schema import letter

if TYPE_CHECKING:
    from mmloop.config import AnswerFormat, GenerateConfig
    from mmloop.teachers.base import Teacher

    # The pool's annotations: ({image sha256: [questions.SceneObject]}, category names).
    Annotations = tuple[dict[str, list[Any]], list[str]]


def make_teacher(config: "GenerateConfig", *, annotations: "Annotations | None", answer_format: "AnswerFormat",
                 seed: int, iteration: int | str, data_root: str | os.PathLike,
                 badcases_path: str | os.PathLike) -> "Teacher":
    """The teacher params name. `annotations`: the pool's ({image sha256: objects}, category
    names), None for an unlabeled pool (only the openai teacher works without). `badcases_path`
    (the previous model's bad cases) is read only by a teacher that shows bad cases in context
    (openai)."""
    objects_by_sha, categories = annotations if annotations is not None else ({}, [])
    if config.backend == "annotations":
        from mmloop.questions import dataset_vocabulary
        from mmloop.teachers.annotations import AnnotationTeacher

        if annotations is None:
            raise ValueError("generate.backend 'annotations' writes questions from annotations, and the pool has "
                             "none (pool.kind 'folder'): use an annotated pool or generate.backend 'openai'")
        colours, shapes = dataset_vocabulary(objects_by_sha, categories)
        return AnnotationTeacher(objects_by_sha, config.format_mix, colours=colours, shapes=shapes,
                                 answer_format=answer_format, seed=seed, iteration=iteration)
    from mmloop.schema import read_samples
    from mmloop.teachers.openai_chat import OpenAITeacher

    if not Path(badcases_path).is_file():
        raise FileNotFoundError(f"{badcases_path}: the bad cases the openai teacher shows in context are missing; "
                                "run the previous iteration's evaluate stage first")
    return OpenAITeacher(config.openai, config.format_mix, answer_format=answer_format,
                         objects_by_image=objects_by_sha, badcases=read_samples(badcases_path),
                         data_root=data_root, iteration=iteration)


def generate(queries: Sequence[Mapping[str, Any]], config: "GenerateConfig", *, annotations: "Annotations | None",
             answer_format: "AnswerFormat", seed: int, iteration: int | str, data_root: str | os.PathLike,
             badcases_path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, metrics) for `queries` from the teacher params name (see teachers.base for the metrics).

    Raises llm.CircuitBreakerOpen when the teacher's requests keep failing: nothing to publish.
    """
    teacher = make_teacher(config, annotations=annotations, answer_format=answer_format, seed=seed,
                           iteration=iteration, data_root=data_root, badcases_path=badcases_path)
    return teacher.run(queries)


def mmbench_items(rows: Sequence[Mapping[str, Any]], *, data_root: str | os.PathLike = "data") -> list[dict[str, Any]]:
    """The mcq rows as MMBench items (index, question, hint, A.., answer letter, category,
    l2-category, image as base64 of the stored PNG bytes), so generated data can be benchmarked."""
    import base64

    items = []
    encoded: dict[str, str] = {}
    for index, row in enumerate(row for row in rows if row["format"] == "mcq" and row["kept"] is not False):
        options = list(row["options"])
        if row["image"] not in encoded:
            encoded[row["image"]] = base64.b64encode((Path(data_root) / row["image"]).read_bytes()).decode("ascii")
        item = {"index": index, "question": row["question"], "hint": None,
                "answer": letter(options.index(row["answer"])), "category": row["category"],
                "l2-category": L2_CATEGORY.get(row["category"], row["category"]), "image": encoded[row["image"]],
                "sample_id": row["sample_id"]}
        item.update({letter(position): option for position, option in enumerate(options)})
        items.append(item)
    return items

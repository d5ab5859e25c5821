"""The `annotations` teacher, the offline default: questions written from the image's annotations.

MLLM-DataEngine's text-only GPT-4 fed with COCO captions and boxes, made exact: for each
query it reads the image's annotations and writes a question of the query's family with
`questions.make_question`, so every answer is correct by construction and re-executable (the
question program is kept in provenance for elimination to verify).

Formats follow params `generate.format_mix`: mcq rows use the MMBench prompt and a reply
naming the option (its letter or text, params answer_format); short rows ask the question
alone and answer with a full sentence.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmloop.io import stable_hash
from mmloop.schema import QUERY_FIELDS, make_sample_id, require_fields, sample
from mmloop.teachers.base import GENERATED, SKIPPED, Parsed, Teacher

FORMATS = ("mcq", "short")


def draw_format(format_mix: Mapping[str, float], rng: random.Random) -> str:
    weights = {name: float(weight) for name, weight in format_mix.items() if float(weight) > 0}
    unknown = set(weights) - set(FORMATS)
    if unknown:
        raise ValueError(f"params.yaml: generate.format_mix has unknown format(s) {sorted(unknown)} "
                         f"(the annotations teacher writes {', '.join(FORMATS)})")
    if not weights:
        raise ValueError("params.yaml: generate.format_mix gives no format a positive weight")
    names = sorted(weights)
    return rng.choices(names, weights=[weights[name] for name in names])[0]


def question_row(made: Any, query: Mapping[str, Any], row_format: str, *, iteration: int | str,
                 answer_format: str) -> dict[str, Any]:
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


@dataclass(frozen=True)
class AnnotationRequest:
    """A question of the query's family in `row_format`, drawn from the query's own stream."""

    query: Mapping[str, Any]
    row_format: str
    rng: random.Random
    key: None = None  # every query draws its own question: no two requests are the same


class AnnotationTeacher(Teacher):
    """One sample per query whose family can be asked on its image (else the query is skipped)."""

    backend = "annotations"

    def __init__(self, objects_by_sha: Mapping[str, Sequence[Any]], format_mix: Mapping[str, float], *,
                 colours: Sequence[str], shapes: Sequence[str], answer_format: str, seed: int,
                 iteration: int | str) -> None:
        self.objects_by_sha = objects_by_sha
        # The dataset's own words: distractors and absent things to ask about come from them.
        self.colours, self.shapes = list(colours), list(shapes)
        self.unaskable: set[str] = set()
        self.format_mix = format_mix
        self.answer_format = answer_format
        self.seed = seed
        self.iteration = iteration

    def prompt(self, query: Mapping[str, Any]) -> AnnotationRequest:
        require_fields(query, QUERY_FIELDS, "queries")
        if query["image_sha256"] not in self.objects_by_sha:
            raise KeyError(f"queries: record {query['sample_id']!r}: image {query['image']!r} (sha256 "
                           f"{query['image_sha256']}) is not in the annotations given to the annotations teacher")
        # Each query draws from its own seeded stream, so one skipped or reordered query does not
        # change what the others get.
        rng = random.Random(stable_hash(self.seed, query["sample_id"]))
        return AnnotationRequest(query, draw_format(self.format_mix, rng), rng)

    def send(self, requests: Sequence[AnnotationRequest]) -> list[Any]:
        """The question programs' answers: a questions.Question, or None when the family cannot be asked."""
        from mmloop import questions

        replies = []
        for request in requests:
            category = request.query["category"]
            if category not in questions.FAMILY_REGISTRY:
                # A benchmark's own category (MMBench's "attribute_recognition"...) that no question
                # program asks: skipped, and named in the metrics (`unaskable`).
                self.unaskable.add(category)
                replies.append(None)
                continue
            replies.append(questions.make_question(category, self.objects_by_sha[request.query["image_sha256"]],
                                                   request.rng, colours=self.colours, shapes=self.shapes))
        return replies

    def summary(self) -> dict[str, Any]:
        return {"unaskable": sorted(self.unaskable)}

    def parse(self, request: AnnotationRequest, reply: Any) -> Parsed:
        if reply is None:
            return Parsed(SKIPPED)
        return Parsed(GENERATED, [question_row(reply, request.query, request.row_format, iteration=self.iteration,
                                               answer_format=self.answer_format)])

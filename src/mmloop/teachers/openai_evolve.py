"""The `openai` teacher's evolution: an OpenAI-compatible chat model evolves and judges items (MMEvol).

`OpenAIEvolver` implements `mmloop.loop.evolution.Evolver` for rows an LLM wrote (or any row
with a question and an answer, mcq or short): `evolution.evolve` draws each parent's operator
and runs the rounds; this module asks the model.

- children: one request per parent for the operator drawn (`orders[i][0]`), rendered from
  that operator's template (params evolve.prompts: prompts/evolve_{perception,reasoning,
  interaction}.j2) with the parent item and the image (attached, or its annotations in caption
  mode, as generation shows it). The reply is ONE item as JSON; "Skip", a reply that does not
  parse or validate (an mcq answer outside its options included), or a failed request give
  no child, and the operator counts as not applicable. The other operators of the order are
  not tried: each try is a paid request.
- judge: one request per (child, direct parent) with prompts/evolve_judge.j2; the reply
  {improved, correct, difficulty_parent, difficulty_child, reason} becomes a `Judgement`:
  answer_mismatch when not correct, no_gain when not improved or not strictly harder, kept
  otherwise; a reply that does not parse, or a failed request, is judge_low with the reason in
  the note (and the structural `evolution.difficulty` in place of the judge's numbers).

A child keeps its parent's image, category and earlier turns (the conversation before the
parent's last question): its own turn replaces the parent's last one, or, for an interaction
follow-up ("follow_up": true), comes after it. Turns are rendered the way generation renders
its items (`openai_chat.render_item`). Multi-turn children stay mcq or short rows whose
`question` is the last question, so a later round can evolve them again.

Requests go through `openai_chat.send_unique` (generation's journal, concurrency, retries,
circuit breaker and usage accounting): a rerun of the stage is served from the journal.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmloop.loop.evolution import INTERACTION, OPERATORS, Judgement, difficulty
from mmloop.schema import ANSWER_MISMATCH, JUDGE_LOW, NO_GAIN, make_sample_id, sample
from mmloop.teachers import llm, structured
from mmloop.teachers.prompts import PromptTemplate
from mmloop.teachers.openai_chat import approved_template, chat_request, image_context, render_item, send_unique

if TYPE_CHECKING:
    from mmloop.config import EvolvePrompts, OpenAIConfig

# The formats an operator may give a child (the others keep the parent's).
EVOLVED_FORMATS = ("mcq", "short")
# The judge template's output_schema key.
JUDGEMENT = "judgement"
NOTE_CHARS = 300


def earlier_turns(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation before a row's last question (a follow-up's first turns; [] for one turn)."""
    return [{"role": turn["role"], "content": turn["content"]} for turn in (row.get("conversations") or [])[:-2]]


def item_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a template shows of a row: format, category, question, options (mcq), answer, and
    the earlier turns when there are any."""
    view: dict[str, Any] = {"format": row["format"], "category": row["category"], "question": row["question"],
                            "answer": row["answer"]}
    if row["format"] == "mcq":
        view["options"] = list(row.get("options") or [])
    earlier = earlier_turns(row)
    if earlier:
        view["earlier_turns"] = earlier
    return view


def declared_format(raw: str | None, operator: str, parent_format: str) -> str:
    """The format a reply's item is validated as: interaction may name another one ("format");
    the other operators keep the parent's."""
    if operator != INTERACTION or not raw or structured.is_skip(raw):
        return parent_format
    try:
        value, _ = structured.repair_json(raw)
    except ValueError:
        return parent_format
    first = value[0] if isinstance(value, list) and value else value
    named = first.get("format") if isinstance(first, Mapping) else None
    return named if named in EVOLVED_FORMATS else parent_format


def parse_judgement(raw: str | None, schema: Mapping[str, Any] | None
                    ) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """(the judge's verdict, None, repairs) when the reply validates, else (None, why, repairs)."""
    try:
        value, repairs = structured.repair_json(raw or "")
    except ValueError as err:
        return None, f"parse: {err}", []
    if isinstance(value, list) and len(value) == 1:  # the one object asked for, in a list
        value = value[0]
    verdict, reason = structured.validate_item(value, JUDGEMENT, dict(schema or {}))
    return verdict, reason, repairs


def one_line(text: str | None) -> str | None:
    """A note on one line, at most NOTE_CHARS characters (None for none)."""
    line = " ".join(str(text or "").split())
    return line[:NOTE_CHARS] or None


def _add_usage(total: llm.Usage, more: llm.Usage) -> None:
    for item in dataclasses.fields(total):
        setattr(total, item.name, getattr(total, item.name) + getattr(more, item.name))


class OpenAIEvolver:
    """MMEvol's evolution and judge through an OpenAI-compatible chat endpoint (params
    generate.openai for the endpoint, evolve.prompts for the templates)."""

    backend = "openai"

    def __init__(self, config: "OpenAIConfig", prompts: "EvolvePrompts", *, answer_format: str,
                 objects_by_image: Mapping[str, Sequence[Any]], data_root: str | Path,
                 iteration: int | str) -> None:
        """`objects_by_image` maps image_sha256 to the image's objects (caption mode's image);
        `data_root` holds the images the rows name."""
        self.config = config
        self.templates = {operator: approved_template(getattr(prompts, operator)) for operator in OPERATORS}
        self.judge_template = approved_template(prompts.judge)
        self.answer_format = answer_format
        self.objects_by_image = objects_by_image
        self.data_root = Path(data_root)
        self.iteration = iteration
        self.usage = llm.Usage()
        self.requests = 0
        self.unique_requests = 0
        self.counts: Counter = Counter()  # what became of the replies: skipped, parse_failed, ...
        self.repairs: Counter = Counter()

    # ---------------------------------------------------------------- requests

    def _request(self, template: PromptTemplate, row: Mapping[str, Any], label: str, **context: Any) -> llm.ChatRequest:
        rendered = template.render(**context, **image_context(row, self.objects_by_image, self.config))
        return chat_request(self.config, template, rendered.text, self.data_root / row["image"], label)

    def operator_request(self, parent: Mapping[str, Any], operator: str) -> llm.ChatRequest:
        """The request evolving `parent` with `operator`."""
        template = self.templates[operator]
        return self._request(template, parent, parent["sample_id"], parent=item_view(parent),
                             output_schema=template.output_schema)

    def judge_request(self, child: Mapping[str, Any], parent: Mapping[str, Any]) -> llm.ChatRequest:
        """The request judging `child` against its direct parent."""
        template = self.judge_template
        return self._request(template, child, child["sample_id"], parent=item_view(parent), child=item_view(child),
                             operator=child["provenance"]["operator"],
                             output_schema=template.output_schema.get(JUDGEMENT) or {})

    def _send(self, requests: Sequence[llm.ChatRequest], desc: str) -> list[llm.ChatResult]:
        if not requests:
            return []
        results, usage, unique = send_unique(requests, self.config, desc=desc)
        _add_usage(self.usage, usage)
        self.requests += len(requests)
        self.unique_requests += unique
        return results

    # ---------------------------------------------------------------- the Evolver protocol

    def children(self, parents: Sequence[Mapping[str, Any]], orders: Sequence[Sequence[str]],
                 rngs: Sequence[random.Random], *, round: int
                 ) -> list[tuple[dict[str, Any] | None, str | None, list[str]]]:
        """Per parent: (its child, the operator, []) or (None, None, [the operator]). Only the drawn
        operator is asked (`rngs` are unused: the model samples, and the journal replays it)."""
        unfit = [parent["sample_id"] for parent in parents if parent.get("format") not in EVOLVED_FORMATS]
        if unfit:
            raise ValueError(f"rows {unfit[:5]} are not mcq or short: the openai evolver rewrites only those "
                             "(filter with evolution.evolvable)")
        operators = [order[0] for order in orders]
        requests = [self.operator_request(parent, operator) for parent, operator in zip(parents, operators, strict=True)]
        results = self._send(requests, f"evolve iter={self.iteration} round={round}")
        made: list[tuple[dict[str, Any] | None, str | None, list[str]]] = []
        for parent, operator, request, result in zip(parents, operators, requests, results):
            child = self._child(parent, operator, request, result, round)
            made.append((child, operator, []) if child is not None else (None, None, [operator]))
        return made

    def judge(self, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[Judgement]:
        """Per (child, parent): the judge model's verdict (see the module docstring)."""
        requests = [self.judge_request(child, parent) for child, parent in pairs]
        results = self._send(requests, f"evolve judge iter={self.iteration}")
        return [self._judgement(child, parent, result) for (child, parent), result in zip(pairs, results)]

    # ---------------------------------------------------------------- replies

    def _child(self, parent: Mapping[str, Any], operator: str, request: llm.ChatRequest, result: llm.ChatResult,
               round_number: int) -> dict[str, Any] | None:
        """The evolved row of a reply, or None (counted by why)."""
        if not result.ok:
            self.counts["request_failed"] += 1
            return None
        template = self.templates[operator]
        row_format = declared_format(result.content, operator, parent["format"])
        parsed = structured.parse_reply(result.content, row_format, template.output_schema.get(row_format))
        # One object is what the templates ask for: not a repair here.
        self.repairs.update(repair for repair in parsed.repairs if repair != structured.SINGLE_OBJECT)
        if parsed.status == structured.SKIP:
            self.counts["skipped"] += 1
            return None
        if parsed.status == structured.INVALID:  # an mcq answer outside its options is one
            self.counts["parse_failed"] += 1
            return None
        item = parsed.items[0]
        follow_up = operator == INTERACTION and item.get("follow_up") is True
        self.counts["follow_up"] += follow_up
        before = [dict(turn) for turn in parent["conversations"]] if follow_up else earlier_turns(parent)
        turns, fields = render_item(item, row_format, self.answer_format, parent["sample_id"])
        conversations = [*before, *turns]
        provenance = {"backend": self.backend, "model": self.config.model, "prompt_id": template.name,
                      "prompt_sha256": template.file_sha256, "request_hash": request.key, "operator": operator,
                      "round": int(round_number)}
        return sample(
            sample_id=make_sample_id(parent["image_sha256"], conversations, "evolved", parent["sample_id"]),
            parent_ids=[parent["sample_id"]], iteration=int(self.iteration), origin="evolved",
            image=parent["image"], image_sha256=parent["image_sha256"], category=parent["category"],
            conversations=conversations, provenance=provenance, **fields)

    def _judgement(self, child: Mapping[str, Any], parent: Mapping[str, Any], result: llm.ChatResult) -> Judgement:
        if not result.ok:
            self.counts["judge_request_failed"] += 1
            return self._judge_low(child, parent, f"judge request failed: {result.reason or result.error}")
        verdict, why, repairs = parse_judgement(result.content, self.judge_template.output_schema.get(JUDGEMENT))
        self.repairs.update(repairs)
        if verdict is None:
            self.counts["judge_parse_failed"] += 1
            return self._judge_low(child, parent, f"judge reply unusable ({why}): {result.content}")
        before, after = float(verdict["difficulty_parent"]), float(verdict["difficulty_child"])
        if not verdict["correct"]:
            reason: str | None = ANSWER_MISMATCH
        elif not verdict["improved"] or after <= before:
            reason = NO_GAIN
        else:
            reason = None
        return Judgement(reason is None, before, after, reason, one_line(verdict["reason"]))

    def _judge_low(self, child: Mapping[str, Any], parent: Mapping[str, Any], note: str) -> Judgement:
        """Not improved: the judge gave no verdict. The difficulties are the structural ones, so
        the round's statistics stay on the 1..10 scale."""
        return Judgement(False, difficulty(parent), difficulty(child), JUDGE_LOW, one_line(note))

    def stats(self) -> dict[str, Any]:
        """What evolution cost and how the replies fared, for the stage's metrics."""
        outcomes = ("skipped", "parse_failed", "request_failed", "follow_up", "judge_parse_failed",
                    "judge_request_failed")
        return {"model": self.config.model,
                "prompts": {name: {"prompt_id": template.name, "prompt_sha256": template.file_sha256}
                            for name, template in [*self.templates.items(), ("judge", self.judge_template)]},
                "journal": str(llm.journal_path(self.config)), "requests": self.requests,
                "unique_requests": self.unique_requests, **{name: self.counts[name] for name in outcomes},
                "parse_failures": self.counts["parse_failed"] + self.counts["judge_parse_failed"],
                "repairs": dict(sorted(self.repairs.items())),
                "usage": self.usage.metrics(self.config.model, self.config.prices)}

"""The `openai` teacher: an OpenAI-compatible chat model writes targeted items for each query.

For every query (an image chosen near a bad case, plus in-context bad cases of the same
question type), the generation template (params generate.openai.prompt, MLLM-DataEngine's
structure) is rendered with the question type and its definition, the bad cases, and the
image: as a base64 data URL, or, in text-only mode, as its annotations (the way
MLLM-DataEngine fed COCO captions and boxes to a text-only GPT-4). Requests go through
`mmloop.teachers.llm` (journal, AIMD concurrency, retries, circuit breaker). Replies are
parsed by `mmloop.teachers.structured` into sample rows:

- valid items become origin "generated" rows (kept and reject_reason null, for elimination
  to judge);
- a "Skip" reply, a reply that does not parse or validate, and a request that failed for
  good become rows with kept=False and reject_reason "skipped", "parse_failed" or
  "request_failed". Their conversation is the exact prompt and the raw reply, which is what
  the IPO review shows a person.

Provenance of every row: backend "openai", model, prompt_id ("generate@vN"), prompt_sha256
(sha256 of the template file, i.e. the prompt version), prompt_render_sha256 (sha256 of the
rendered prompt), request_hash (the journal key). Never the API key.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmloop.io import stable_hash
from mmloop.questions import mcq_prompt, mcq_reply
from mmloop.schema import QUERY_FIELDS, make_sample_id, require_fields, sample
from mmloop.teachers import journal as journal_mod
from mmloop.teachers import llm, prompts, structured
from mmloop.teachers.base import GENERATED, PARSE_FAILED, REQUEST_FAILED, SKIPPED, Parsed, Teacher

if TYPE_CHECKING:
    from mmloop.config import OpenAIConfig

OBJECT_KEYS = ("shape", "colour", "size", "row", "col", "bbox")
# params.yaml calls the text-only mode "caption" (the image given as text); the template tests
# for "annotations", what that text is. Mapped here so the template file, and with it the
# prompt version and every journal key, stays the same.
TEMPLATE_IMAGE_MODES = {"image": "image", "caption": "annotations"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One query's request: what was asked, so the reply can be turned into rows."""

    query: Mapping[str, Any]
    data_type: str
    request: llm.ChatRequest
    prompt_text: str
    render_sha256: str

    @property
    def key(self) -> str:
        return self.request.key


def choose_data_type(query_id: str, format_mix: Mapping[str, float]) -> str:
    """A deterministic draw from format_mix (keys among mcq/short/conversation) per query."""
    weights = {k: float(v) for k, v in format_mix.items() if k in structured.DATA_TYPES and float(v) > 0}
    if not weights:
        return "mcq"
    draw = int(stable_hash("format", query_id, length=8), 16) / 16 ** 8 * sum(weights.values())
    for name, weight in sorted(weights.items()):
        draw -= weight
        if draw < 0:
            return name
    return sorted(weights)[-1]


def object_dict(obj: Any) -> dict[str, Any]:
    """An object description for the prompt, from a questions.py object or a COCO-style dict."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    elif not isinstance(obj, Mapping):
        obj = {k: getattr(obj, k) for k in OBJECT_KEYS + ("category",) if hasattr(obj, k)}
    flat = dict(obj)
    flat.update(flat.pop("attributes", None) or {})
    if "shape" not in flat:
        flat["shape"] = flat.get("category") or flat.get("name")
    if "bbox" in flat and flat["bbox"] is not None:
        flat["bbox"] = [round(float(v), 1) for v in flat["bbox"]]
    return {k: flat[k] for k in OBJECT_KEYS if flat.get(k) is not None}


def _badcase_context(case: Mapping[str, Any]) -> dict[str, Any]:
    options = list(case.get("options") or [])
    turns = case.get("conversations") or []
    wrong = next((t["content"] for t in reversed(turns) if t["role"] == "assistant"), "") or "?"
    index = ord(wrong.strip()[:1].upper()) - 65 if wrong.strip() else -1
    if len(wrong.strip()) == 1 and 0 <= index < len(options):
        wrong = f"{wrong.strip()} ({options[index]})"
    return {"question": case.get("question") or "", "options": options, "answer": case.get("answer") or "",
            "wrong": wrong}


def _image_size(query: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    if query.get("width") and query.get("height"):
        return int(query["width"]), int(query["height"])
    # Annotations carry no image size in the query row; the boxes bound it well enough for the prompt.
    right = max((o["bbox"][0] + o["bbox"][2] for o in objects if "bbox" in o), default=0)
    bottom = max((o["bbox"][1] + o["bbox"][3] for o in objects if "bbox" in o), default=0)
    size = max(64, int(right), int(bottom))
    return size, size


def render_item(item: Mapping[str, Any], data_type: str, answer_format: str, seed: str
                ) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A validated item's conversation and its sample fields (format, question, options, answer).
    `seed` (the row it was made for) fixes the mcq options' shuffle."""
    if data_type == "mcq":
        options = list(item["options"])
        # Teachers favour putting the answer first; a seeded shuffle keeps letters balanced.
        random.Random(stable_hash(seed, item["question"], options)).shuffle(options)
        conversations = [{"role": "user", "content": mcq_prompt(item["question"], options, answer_format=answer_format)},
                         {"role": "assistant", "content": mcq_reply(options, item["answer"], answer_format)}]
        return conversations, dict(format="mcq", question=item["question"], options=options, answer=item["answer"])
    if data_type == "short":
        conversations = [{"role": "user", "content": item["question"]},
                         {"role": "assistant", "content": item["answer"]}]
        return conversations, dict(format="short", question=item["question"], answer=item["answer"])
    conversations = [{"role": t["role"], "content": t["content"]} for t in item["conversations"]]
    return conversations, dict(format="conversation", question=conversations[0]["content"],
                               answer=conversations[-1]["content"])


def item_record(item: Mapping[str, Any], plan: Plan, provenance: dict[str, Any], iteration: int | str,
                answer_format: str) -> dict[str, Any]:
    """A validated item as a sample row."""
    query = plan.query
    common = dict(parent_ids=[query["sample_id"]], iteration=int(iteration), origin="generated",
                  image=query["image"], image_sha256=query["image_sha256"], category=query["category"],
                  provenance=provenance)
    conversations, fields = render_item(item, plan.data_type, answer_format, query["sample_id"])
    sample_id = make_sample_id(query["image_sha256"], conversations, "generated", query["sample_id"])
    return sample(sample_id=sample_id, conversations=conversations, **common, **fields)


def rejected_record(plan: Plan, raw: str, reason: str, provenance: dict[str, Any], iteration: int | str
                    ) -> dict[str, Any]:
    """A reply that produced no item, kept for the IPO review: the exact prompt and the raw reply."""
    query = plan.query
    conversations = [{"role": "user", "content": plan.prompt_text}, {"role": "assistant", "content": raw or ""}]
    sample_id = make_sample_id(query["image_sha256"], conversations, "generated", query["sample_id"], reason)
    return sample(sample_id=sample_id, parent_ids=[query["sample_id"]], iteration=int(iteration), origin="generated",
                  image=query["image"], image_sha256=query["image_sha256"], category=query["category"],
                  format="open", conversations=conversations, provenance=provenance, kept=False,
                  reject_reason=reason)


def approved_template(path: str | Path) -> prompts.PromptTemplate:
    """A prompt template, refused while its version is one the teacher proposed and no one reviewed."""
    template = prompts.load_template(path)
    if template.meta.get("status") == "proposed":
        raise ValueError(f"{template.path}: this prompt version was proposed by the teacher and not yet "
                         "reviewed; read it, then set 'status: approved' in its front matter to use it")
    return template


def image_context(row: Mapping[str, Any], objects_by_image: Mapping[str, Sequence[Any]],
                  config: "OpenAIConfig") -> dict[str, Any]:
    """The template variables that show a row's image: the mode, and for text-only mode its
    annotations and size."""
    objects = [object_dict(o) for o in objects_by_image.get(row["image_sha256"], [])]
    width, height = _image_size(row, objects)
    return {"image_mode": TEMPLATE_IMAGE_MODES[config.image_mode], "objects": objects, "width": width,
            "height": height}


def chat_request(config: "OpenAIConfig", template: prompts.PromptTemplate, text: str, image_path: Path,
                 label: str) -> llm.ChatRequest:
    """The request of one rendered prompt: one user message, the image attached as a data URL in
    image mode; keyed for the journal by what changes the reply (model, messages, sampling, template)."""
    if config.image_mode == "image":
        url = llm.image_data_url(image_path, config.image_max_side)
        content: Any = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    else:
        content = text
    messages = [{"role": "user", "content": content}]
    key = journal_mod.request_key(config.model, messages, config.generation, template.file_sha256)
    return llm.ChatRequest(key, messages, label=label)


def send_unique(requests: Sequence[llm.ChatRequest], config: "OpenAIConfig", *, desc: str
                ) -> tuple[list[llm.ChatResult], llm.Usage, int]:
    """(one result per request in order, usage, unique requests): identical requests are sent once,
    through the journal (a rerun sends only what it lacks)."""
    unique: dict[str, llm.ChatRequest] = {}
    for request in requests:
        unique.setdefault(request.key, request)
    with journal_mod.Journal(llm.journal_path(config)) as journal:
        results, usage = llm.run_chat(list(unique.values()), config, journal, desc=desc)
    by_key = {result.key: result for result in results}
    return [by_key[request.key] for request in requests], usage, len(unique)


class OpenAITeacher(Teacher):
    """Items for each query from an OpenAI-compatible chat endpoint (params generate.openai)."""

    backend = "openai"

    def __init__(self, config: "OpenAIConfig", format_mix: Mapping[str, float], *, answer_format: str,
                 objects_by_image: Mapping[str, Sequence[Any]], badcases: Sequence[Mapping[str, Any]],
                 data_root: str | Path, iteration: int | str) -> None:
        """`objects_by_image` maps image_sha256 to the image's objects (questions.py objects or
        COCO-style dicts; the text-only mode's image, and the prompt's image size); `badcases` are
        the previous model's bad cases, shown in context by sample_id."""
        self.config = config
        self.template = approved_template(config.prompt)
        self.format_mix = format_mix
        self.answer_format = answer_format
        self.objects_by_image = objects_by_image
        self.cases = {case["sample_id"]: case for case in badcases}
        self.data_root = Path(data_root)
        self.iteration = iteration
        self.journal_path = llm.journal_path(config)
        self.usage = llm.Usage()
        self.unique_requests = 0
        self.repairs: Counter = Counter()
        self.invalid_items = 0

    def prompt(self, query: Mapping[str, Any]) -> Plan:
        require_fields(query, QUERY_FIELDS, "queries")
        config, template = self.config, self.template
        category = query["category"]
        data_type = choose_data_type(query["sample_id"], self.format_mix)
        parents = list(query.get("parent_ids") or [])
        context_ids = parents[1:] or parents[:1]  # the in-context bad cases; the anchor if none were drawn
        shown = [_badcase_context(self.cases[i]) for i in context_ids if i in self.cases]
        definitions = template.meta.get("definitions") or {}
        rendered = template.render(
            category=category, definition=definitions.get(category, f"questions about {category}"),
            data_type=data_type, data_type_definition=(template.meta.get("data_types") or {}).get(data_type, data_type),
            output_schema=template.output_schema.get(data_type) or structured.DEFAULT_SCHEMAS[data_type],
            n_items=config.items_per_request, badcases=shown,
            **image_context(query, self.objects_by_image, config))
        request = chat_request(config, template, rendered.text, self.data_root / query["image"], query["sample_id"])
        return Plan(query, data_type, request, rendered.text, rendered.sha256)

    def send(self, plans: Sequence[Plan]) -> list[llm.ChatResult]:
        # Identical requests are sent once (Teacher.run lets only the first query asking it make rows).
        results, self.usage, self.unique_requests = send_unique([plan.request for plan in plans], self.config,
                                                                desc=f"generate iter={self.iteration}")
        return results

    def parse(self, plan: Plan, reply: llm.ChatResult) -> Parsed:
        provenance = {"backend": self.backend, "model": self.config.model, "prompt_id": self.template.name,
                      "prompt_sha256": self.template.file_sha256, "prompt_render_sha256": plan.render_sha256,
                      "request_hash": plan.key}
        if not reply.ok:
            return self._rejected(plan, reply.content, REQUEST_FAILED, provenance)
        parsed = structured.parse_reply(reply.content, plan.data_type, self.template.output_schema.get(plan.data_type))
        self.repairs.update(parsed.repairs)
        self.invalid_items += len(parsed.rejected)
        if parsed.status == structured.SKIP:
            return self._rejected(plan, reply.content, SKIPPED, provenance)
        if parsed.status == structured.INVALID:
            return self._rejected(plan, reply.content, PARSE_FAILED, provenance)
        return Parsed(GENERATED, [item_record(item, plan, provenance, self.iteration, self.answer_format)
                                  for item in parsed.items])

    def _rejected(self, plan: Plan, raw: str | None, outcome: str, provenance: dict[str, Any]) -> Parsed:
        return Parsed(outcome, [rejected_record(plan, raw or "", outcome, provenance, self.iteration)])

    def summary(self) -> dict[str, Any]:
        return {"model": self.config.model, "prompt_id": self.template.name,
                "prompt_sha256": self.template.file_sha256, "journal": str(self.journal_path),
                "unique_requests": self.unique_requests, "invalid_items": self.invalid_items,
                "repairs": dict(sorted(self.repairs.items())),
                "usage": self.usage.metrics(self.config.model, self.config.prices)}

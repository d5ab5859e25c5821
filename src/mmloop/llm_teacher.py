"""The `openai` generator backend: an LLM teacher writes targeted items for each query.

For every query (an image chosen near a bad case, plus in-context bad cases
of the same question type), the generation template (prompts/generate.j2,
MLLM-DataEngine's structure) is rendered with the question type and its
definition, the bad cases, and the image: as a base64 data URL, or, in
text-only mode, as its annotations (the way MLLM-DataEngine fed COCO captions
and boxes to a text-only GPT-4). Requests go through `mmloop.llm` (journal,
AIMD concurrency, retries). Replies are parsed by `mmloop.structured` into
sample rows:

- valid items become origin "generated" rows (kept and reject_reason null,
  for elimination to judge);
- a "Skip" reply, a reply that does not parse or validate, and a request that
  failed for good become rows with kept=False and reject_reason "skipped",
  "parse_failed" or "request_failed". Their conversation is the exact prompt
  and the raw reply, which is what the IPO review shows a person.

Provenance of every row: backend "openai", model, prompt_id ("generate@vN"),
prompt_sha256 (sha256 of the template file, i.e. the prompt version),
prompt_render_sha256 (sha256 of the rendered prompt; stored when the sample
schema has that field), request_hash (the journal key). Never the API key.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop import journal as journal_mod
from mmloop import llm, prompts, structured
from mmloop.io import stable_hash
from mmloop.questions import mcq_prompt, mcq_reply
from mmloop.schema import QUERY_FIELDS, make_sample_id, require_fields, sample

BACKEND = "openai"
SKIPPED, PARSE_FAILED, REQUEST_FAILED = "skipped", "parse_failed", "request_failed"
DEFAULT_PROMPT = "prompts/generate.j2"
OBJECT_KEYS = ("shape", "colour", "size", "row", "col", "bbox")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One query's request: what was asked, so the reply can be turned into rows."""

    query: Mapping[str, Any]
    data_type: str
    request: llm.ChatRequest
    prompt_text: str
    render_sha256: str


def choose_data_type(query_id: str, format_mix: Mapping[str, float]) -> str:
    """A deterministic draw from format_mix (keys among mcq/short/conversation) per query."""
    weights = {k: float(v) for k, v in (format_mix or {}).items() if k in structured.DATA_TYPES and float(v) > 0}
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


def build_plans(queries: Sequence[Mapping[str, Any]], badcases: Sequence[Mapping[str, Any]],
                objects_by_image: Mapping[str, Sequence[Any]], params: Mapping[str, Any], *,
                data_root: str | Path, template: prompts.PromptTemplate, settings: llm.Settings) -> list[Plan]:
    openai_params = params.get("openai") or {}
    image_mode = openai_params.get("image_mode", "image")
    if image_mode not in ("image", "annotations"):
        raise ValueError(f"params: generate.openai.image_mode must be 'image' or 'annotations', got {image_mode!r}")
    max_side = openai_params.get("image_max_side", 512)
    n_items = int(openai_params.get("items_per_request", 1))
    definitions = template.meta.get("definitions") or {}
    type_definitions = template.meta.get("data_types") or {}
    cases = {case["sample_id"]: case for case in badcases}
    data_root = Path(data_root)
    plans = []
    for query in queries:
        qid = query.get("sample_id")
        require_fields(query, QUERY_FIELDS, "queries")
        category = query["category"]
        data_type = choose_data_type(qid, params.get("format_mix") or {})
        parents = list(query.get("parent_ids") or [])
        context_ids = parents[1:] or parents[:1]  # the in-context bad cases; the anchor if none were drawn
        shown = [_badcase_context(cases[i]) for i in context_ids if i in cases]
        objects = [object_dict(o) for o in objects_by_image.get(query["image_sha256"], [])]
        width, height = _image_size(query, objects)
        rendered = template.render(
            category=category, definition=definitions.get(category, f"questions about {category}"),
            data_type=data_type, data_type_definition=type_definitions.get(data_type, data_type),
            output_schema=template.output_schema.get(data_type) or structured.DEFAULT_SCHEMAS[data_type],
            n_items=n_items, image_mode=image_mode, objects=objects, width=width, height=height,
            badcases=shown)
        if image_mode == "image":
            url = llm.image_data_url(data_root / query["image"], max_side)
            content: Any = [{"type": "text", "text": rendered.text},
                            {"type": "image_url", "image_url": {"url": url}}]
        else:
            content = rendered.text
        messages = [{"role": "user", "content": content}]
        key = journal_mod.request_key(settings.model, messages, settings.generation, template.file_sha256)
        plans.append(Plan(query, data_type, llm.ChatRequest(key, messages, label=qid), rendered.text,
                          rendered.sha256))
    return plans


def _image_size(query: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    if query.get("width") and query.get("height"):
        return int(query["width"]), int(query["height"])
    # Annotations carry no image size in the query row; the boxes bound it well enough for the prompt.
    right = max((o["bbox"][0] + o["bbox"][2] for o in objects if "bbox" in o), default=0)
    bottom = max((o["bbox"][1] + o["bbox"][3] for o in objects if "bbox" in o), default=0)
    size = max(64, int(right), int(bottom))
    return size, size


def item_record(item: Mapping[str, Any], plan: Plan, provenance: dict[str, Any], iteration: int,
                answer_format: str = "letter") -> dict[str, Any]:
    """A validated item as a sample row."""
    query = plan.query
    common = dict(parent_ids=[query["sample_id"]], iteration=int(iteration), origin="generated",
                  image=query["image"], image_sha256=query["image_sha256"], category=query["category"],
                  provenance=provenance)
    if plan.data_type == "mcq":
        options = list(item["options"])
        # Teachers favour putting the answer first; a seeded shuffle keeps letters balanced.
        random.Random(stable_hash(query["sample_id"], item["question"], options)).shuffle(options)
        conversations = [{"role": "user", "content": mcq_prompt(item["question"], options, answer_format=answer_format)},
                         {"role": "assistant", "content": mcq_reply(options, item["answer"], answer_format)}]
        fields = dict(format="mcq", question=item["question"], options=options, answer=item["answer"])
    elif plan.data_type == "short":
        conversations = [{"role": "user", "content": item["question"]},
                         {"role": "assistant", "content": item["answer"]}]
        fields = dict(format="short", question=item["question"], answer=item["answer"])
    else:
        conversations = [{"role": t["role"], "content": t["content"]} for t in item["conversations"]]
        fields = dict(format="conversation", question=conversations[0]["content"], answer=conversations[-1]["content"])
    sample_id = make_sample_id(query["image_sha256"], conversations, "generated", query["sample_id"])
    return sample(sample_id=sample_id, conversations=conversations, **common, **fields)


def rejected_record(plan: Plan, raw: str, reason: str, provenance: dict[str, Any], iteration: int) -> dict[str, Any]:
    """A reply that produced no item, kept for the IPO review: the exact prompt and the raw reply."""
    query = plan.query
    conversations = [{"role": "user", "content": plan.prompt_text}, {"role": "assistant", "content": raw or ""}]
    sample_id = make_sample_id(query["image_sha256"], conversations, "generated", query["sample_id"], reason)
    return sample(sample_id=sample_id, parent_ids=[query["sample_id"]], iteration=int(iteration), origin="generated",
                  image=query["image"], image_sha256=query["image_sha256"], category=query["category"],
                  format="open", conversations=conversations, provenance=provenance, kept=False,
                  reject_reason=reason)


def generate(queries: Sequence[Mapping[str, Any]], badcases: Sequence[Mapping[str, Any]],
             objects_by_image: Mapping[str, Sequence[Any]], params: Mapping[str, Any], *,
             data_root: str | Path = "data", journal_path: str | Path | None = None,
             iteration: int | str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate sample rows for `queries` with an OpenAI-compatible teacher.

    `params` is the `generate` section of params.yaml (format_mix, and the
    `openai` sub-section). `objects_by_image` maps image_sha256 to the image's
    objects (questions.py objects or COCO-style dicts; used in text-only mode
    and to size the prompt). Returns (records, stats): records are generated
    rows plus kept=False rows for skipped, unparsable and failed requests;
    stats are metrics (counts, rates, usage, cost).
    """
    openai_params = dict(params.get("openai") or {})
    settings = llm.Settings.from_params(openai_params)
    template = prompts.load_template(openai_params.get("prompt", DEFAULT_PROMPT))
    if template.meta.get("status") == "proposed":
        raise ValueError(f"{template.path}: this prompt version was proposed by the teacher and not yet reviewed; "
                         "read it, then set 'status: approved' in its front matter to use it")
    journal_path = Path(journal_path or openai_params.get("journal") or journal_mod.default_path())
    plans = build_plans(queries, badcases, objects_by_image, params, data_root=data_root, template=template,
                        settings=settings)

    # Identical requests are sent once; only the first query asking it turns the reply into rows.
    unique: dict[str, llm.ChatRequest] = {}
    for plan in plans:
        unique.setdefault(plan.request.key, plan.request)
    with journal_mod.Journal(journal_path) as journal:
        results, usage = llm.run_chat(list(unique.values()), settings, journal, desc=f"generate iter={iteration}")
    by_key = {result.key: result for result in results}

    records: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    outcomes: Counter = Counter()
    repairs: Counter = Counter()
    items_invalid = 0
    answered: set[str] = set()
    for plan in plans:
        if plan.request.key in answered:
            outcomes["duplicate_request"] += 1
            continue
        answered.add(plan.request.key)
        result = by_key[plan.request.key]
        provenance = {"backend": BACKEND, "model": settings.model, "prompt_id": template.name,
                      "prompt_sha256": template.file_sha256, "prompt_render_sha256": plan.render_sha256,
                      "request_hash": plan.request.key}
        if not result.ok:
            rows = [rejected_record(plan, result.content or "", REQUEST_FAILED, provenance, iteration)]
            outcomes[REQUEST_FAILED] += 1
        else:
            parsed = structured.parse_reply(result.content, plan.data_type, template.output_schema.get(plan.data_type))
            repairs.update(parsed.repairs)
            items_invalid += len(parsed.rejected)
            if parsed.status == structured.SKIP:
                rows = [rejected_record(plan, result.content, SKIPPED, provenance, iteration)]
                outcomes[SKIPPED] += 1
            elif parsed.status == structured.INVALID:
                rows = [rejected_record(plan, result.content, PARSE_FAILED, provenance, iteration)]
                outcomes[PARSE_FAILED] += 1
            else:
                rows = [item_record(item, plan, provenance, iteration, params.get("answer_format", "letter"))
                        for item in parsed.items]
                outcomes["generated"] += 1
        for row in rows:
            if row["sample_id"] not in seen_ids:  # two identical items in one reply are one sample
                seen_ids.add(row["sample_id"])
                records.append(row)

    n = max(1, len(plans))
    stats = {
        "backend": BACKEND, "model": settings.model, "prompt_id": template.name,
        "prompt_sha256": template.file_sha256, "journal": str(journal_path),
        "queries": len(plans), "unique_requests": len(unique),
        "generated_items": sum(1 for r in records if r["kept"] is None),
        "outcomes": dict(sorted(outcomes.items())),
        "skip_rate": outcomes[SKIPPED] / n, "parse_failure_rate": outcomes[PARSE_FAILED] / n,
        "request_failure_rate": outcomes[REQUEST_FAILED] / n,
        "answer_rate": outcomes["generated"] / n, "invalid_items": items_invalid,
        "repairs": dict(sorted(repairs.items())),
        "usage": usage.metrics(settings.model, settings.prices),
    }
    return records, stats

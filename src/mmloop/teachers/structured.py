"""Structured replies: parse the teacher's JSON, repair common breakage, validate, honour "Skip".

LLMs asked for JSON still wrap it in code fences, leave trailing commas, add a sentence
before it, quote with typographic quotes, or return one object where a list was asked for.
Syntax is repaired by the `json-repair` library; the shape (a single object or a wrapping
object instead of a list of items) is repaired here, since it depends on what was asked.
Every repair is named in the result (`json_syntax`, `single_object`, `wrapped_list`) so the
IPO review shows how often the prompt's format instructions are ignored.

Every item is then validated against the JSON schema of its data type (from the prompt
template's front matter, or DEFAULT_SCHEMAS) plus checks a schema cannot express (the answer
is one of the options; turns alternate). A repaired but incomplete item (a truncated reply)
fails that validation and is counted as a parse failure for a person to see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OK, SKIP, INVALID = "ok", "skip", "invalid"
JSON_SYNTAX, SINGLE_OBJECT, WRAPPED_LIST = "json_syntax", "single_object", "wrapped_list"
DATA_TYPES = ("mcq", "short", "conversation")

_STRING = {"type": "string", "minLength": 1}
DEFAULT_SCHEMAS: dict[str, dict[str, Any]] = {
    "mcq": {
        "type": "object",
        "required": ["question", "options", "answer"],
        "properties": {"question": _STRING, "options": {"type": "array", "items": _STRING, "minItems": 2,
                                                        "maxItems": 8},
                       "answer": _STRING, "rationale": {"type": "string"}},
    },
    "short": {
        "type": "object",
        "required": ["question", "answer"],
        "properties": {"question": _STRING, "answer": _STRING, "rationale": {"type": "string"}},
    },
    "conversation": {
        "type": "object",
        "required": ["conversations"],
        "properties": {"conversations": {"type": "array", "minItems": 2, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": ["user", "assistant"]}, "content": _STRING}}}},
    },
}
_WRAPPER_KEYS = ("items", "questions", "data", "results", "samples", "output")


@dataclass
class ParseResult:
    status: str                                  # ok | skip | invalid
    items: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[Any, str]] = field(default_factory=list)  # (item, reason) for items that failed validation
    reason: str | None = None                    # why the whole reply failed (status invalid)
    repairs: list[str] = field(default_factory=list)
    raw: str = ""


def is_skip(text: str) -> bool:
    """The prompt's explicit way out: a reply that is just 'Skip' (quotes, fences, punctuation ignored)."""
    core = re.sub(r"^```\w*|```$", "", text.strip()).strip().strip("\"'`*.!:[]{} \n").lower()
    return core == "skip" or core == '"skip": true' or core.replace(" ", "") in ('"skip":true', "skip:true")


def repair_json(text: str) -> tuple[Any, list[str]]:
    """Parse JSON from an LLM reply. Returns (value, repairs made): none for valid JSON, else
    `json_syntax` (fences, prose around it, trailing commas, odd quotes, unclosed brackets)."""
    try:
        return json.loads(text), []
    except json.JSONDecodeError:
        pass
    import json_repair

    value = json_repair.repair_json(text, return_objects=True)
    if not isinstance(value, (dict, list)):  # json-repair returns "" for text that holds no JSON
        raise ValueError("no JSON object or array in the reply")
    return value, [JSON_SYNTAX]


def _as_items(value: Any, data_type: str, repairs: list[str]) -> list[Any]:
    if isinstance(value, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(value.get(key), list):
                repairs.append(WRAPPED_LIST)
                return value[key]
        if data_type != "conversation" and isinstance(value.get("conversations"), list) \
                and not {"question", "answer"} & set(value):
            return [value]
        repairs.append(SINGLE_OBJECT)
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"expected a JSON list of items, got {type(value).__name__}")


def _validator(schema: dict[str, Any]):
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


def validate_item(item: Any, data_type: str, schema: dict[str, Any] | None = None) -> tuple[dict | None, str | None]:
    """(normalised item, None) when valid, else (None, reason)."""
    schema = schema or DEFAULT_SCHEMAS[data_type]
    errors = sorted(_validator(schema).iter_errors(item), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "item"
        return None, f"schema: {where}: {error.message[:160]}"
    item = dict(item)
    if data_type == "mcq":
        options = [str(o).strip() for o in item["options"]]
        if len({o.lower() for o in options}) != len(options):
            return None, "options are not unique"
        answer = str(item["answer"]).strip()
        letter = re.fullmatch(r"\(?([A-Ha-h])[.)]?", answer)
        lowered = [o.lower() for o in options]
        if answer.lower() in lowered:
            answer = options[lowered.index(answer.lower())]
        elif letter and ord(letter.group(1).upper()) - 65 < len(options):
            answer = options[ord(letter.group(1).upper()) - 65]  # "B" -> the text of option B
        else:
            return None, f"answer {answer!r} is not one of the options"
        item.update(question=str(item["question"]).strip(), options=options, answer=answer)
    elif data_type == "conversation":
        turns = item["conversations"]
        roles = [t["role"] for t in turns]
        if roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:])) or roles[-1] != "assistant":
            return None, "turns must alternate user/assistant, starting with user and ending with assistant"
    return item, None


def parse_reply(text: str | None, data_type: str, schema: dict[str, Any] | None = None) -> ParseResult:
    """Parse one teacher reply into validated items of `data_type`."""
    if data_type not in DATA_TYPES:
        raise ValueError(f"unknown data type {data_type!r} (expected one of {DATA_TYPES})")
    raw = text or ""
    if not raw.strip():
        return ParseResult(INVALID, reason="empty reply", raw=raw)
    if is_skip(raw):
        return ParseResult(SKIP, reason="skip", raw=raw)
    try:
        value, repairs = repair_json(raw)
    except ValueError as err:
        return ParseResult(INVALID, reason=f"parse: {err}", raw=raw)
    if value == "Skip" or (isinstance(value, dict) and value.get("skip") is True) or \
            (isinstance(value, list) and value and all(isinstance(v, str) and is_skip(v) for v in value)):
        return ParseResult(SKIP, reason="skip", raw=raw, repairs=repairs)
    try:
        candidates = _as_items(value, data_type, repairs)
    except ValueError as err:
        return ParseResult(INVALID, reason=f"parse: {err}", raw=raw, repairs=repairs)
    result = ParseResult(OK, raw=raw, repairs=repairs)
    for candidate in candidates:
        item, reason = validate_item(candidate, data_type, schema)
        if item is None:
            result.rejected.append((candidate, reason))
        else:
            result.items.append(item)
    if not result.items:
        result.status = INVALID
        result.reason = result.rejected[0][1] if result.rejected else "parse: empty list"
    return result

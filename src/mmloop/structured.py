"""Structured replies: parse the teacher's JSON, repair common breakage, validate, honour "Skip".

LLMs asked for JSON still wrap it in code fences, leave trailing commas, add
a sentence before it, return one object where a list was asked for, or quote
with typographic quotes. `repair_json` fixes exactly those, and says which
repairs it made so the IPO review can show how often the prompt's format
instructions are ignored. It does not guess at anything else (truncated
output is a `length` failure upstream, not something to patch).

Why a small function and not the `json-repair` package: the build machines
have no package index, and the breakage we accept is a short, explicit list;
anything outside it should surface as a parse failure for a person to see.

Every item is then validated against the JSON schema of its data type (from
the prompt template's front matter, or DEFAULT_SCHEMAS) plus checks a schema
cannot express (the answer is one of the options; turns alternate).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OK, SKIP, INVALID = "ok", "skip", "invalid"
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


def _strip_fences(text: str) -> tuple[str, bool]:
    match = re.search(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", text, re.S)
    return (match.group(1), True) if match else (text, False)


def _outer_json(text: str) -> str:
    """The span from the first '[' or '{' to the last matching closer, dropping prose around it."""
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        raise ValueError("no JSON object or array in the reply")
    start = min(starts)
    closer = "]" if text[start] == "[" else "}"
    end = text.rfind(closer)
    if end < start:
        raise ValueError("JSON starts but never closes (truncated reply?)")
    return text[start:end + 1]


def _remove_trailing_commas(text: str) -> str:
    """Drop commas directly before '}' or ']', outside strings."""
    out, in_string, escaped = [], False, False
    for index, char in enumerate(text):
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == ",":
            rest = text[index + 1:].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(char)
    return "".join(out)


def repair_json(text: str) -> tuple[Any, list[str]]:
    """Parse JSON from an LLM reply, applying the known repairs. Returns (value, repairs made)."""
    repairs: list[str] = []
    try:
        return json.loads(text), repairs
    except json.JSONDecodeError:
        pass
    candidate, fenced = _strip_fences(text)
    if fenced:
        repairs.append("code_fence")
    if any(q in candidate for q in "\u201c\u201d"):
        candidate = candidate.replace("\u201c", '"').replace("\u201d", '"')
        repairs.append("smart_quotes")
    try:
        return json.loads(candidate), repairs
    except json.JSONDecodeError:
        pass
    outer = _outer_json(candidate)
    if outer.strip() != candidate.strip():
        repairs.append("surrounding_text")
    try:
        return json.loads(outer), repairs
    except json.JSONDecodeError:
        pass
    without_commas = _remove_trailing_commas(outer)
    if without_commas != outer:
        repairs.append("trailing_comma")
    try:
        return json.loads(without_commas), repairs
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON after repairs {repairs or '[]'}: {err.msg} at char {err.pos}") from None


def _as_items(value: Any, data_type: str, repairs: list[str]) -> list[Any]:
    if isinstance(value, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(value.get(key), list):
                repairs.append("wrapped_list")
                return value[key]
        if data_type != "conversation" and isinstance(value.get("conversations"), list) \
                and not {"question", "answer"} & set(value):
            return [value]
        repairs.append("single_object")
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

"""A fault-injecting, OpenAI-compatible HTTP server for tests and benchmarks.

It speaks enough of the OpenAI REST API for the official `openai` client:
`POST /v1/chat/completions`, `POST /v1/files`, `GET /v1/files/{id}/content`,
`POST /v1/batches` and `GET /v1/batches/{id}`. Replies are plausible JSON
built from the prompt (the question type and the annotations in it), so the
parsing and validation code downstream runs on realistic text.

Faults are injected per request with probability `fault_rate`: a 429 with
Retry-After, a 500, a timeout (the server sleeps past the client's timeout and
then answers 504), or garbage (a 200 whose body is not JSON). A share of
contents (`failing_rate`) is never served: every request for it gets
`failing_status`. Every request is
counted per *content* (a hash of its messages), so a test can tell how many
times the same request reached the server and how many times it was answered
successfully, which is what "lost", "duplicated" and "sent again" are measured on.

Run in a thread (`OpenAIServer(...).start()`) or as a process:
`python tests/openai_server.py --port 0 --latency 0.2` prints `listening on URL`.
`GET /_stats` returns the counters; `POST /_reset` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULT_KINDS = ("429", "500", "timeout", "garbage")
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def content_key(messages: Any) -> str:
    """The identity of a request for counting: its messages, canonically serialised."""
    blob = json.dumps(messages, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class FaultConfig:
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    latency: float = 0.0            # seconds added to every successful answer
    timeout_sleep: float = 2.0      # how long a "timeout" fault stalls before answering 504
    skip_rate: float = 0.0          # share of contents answered with a bare "Skip"
    messy_rate: float = 0.0         # share answered with fenced / trailing-comma / single-object JSON
    broken_rate: float = 0.0        # share answered with text that is not JSON at all
    finish_reason_length_rate: float = 0.0
    failing_rate: float = 0.0        # share of contents always answered with failing_status
    failing_status: int = 500
    batch_polls_until_done: int = 1  # batch retrievals before a batch reports "completed"
    seed: int = 0
    expected_key: str | None = None  # when set, requests without this bearer token get a 401


@dataclass
class Counters:
    attempts: Counter = field(default_factory=Counter)     # content -> requests received
    successes: Counter = field(default_factory=Counter)    # content -> 200 answers with a completion
    batch_successes: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)       # fault kind -> count
    texts: dict = field(default_factory=dict)              # content -> last user text (for tests)
    unauthorised: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "attempts": dict(self.attempts), "successes": dict(self.successes),
            "batch_successes": dict(self.batch_successes), "faults": dict(self.faults),
            "texts": dict(self.texts), "unauthorised": self.unauthorised,
            "max_in_flight": self.max_in_flight,
        }


def _user_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n".join(parts)


def _fraction(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) per content, so reruns get the same reply."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) / 2**32


def _objects(text: str) -> list[dict[str, Any]]:
    match = re.search(r"<objects>\s*(.*?)\s*</objects>", text, re.S)
    if not match:
        return []
    try:
        objects = json.loads(match.group(1))
    except json.JSONDecodeError:
        return []
    return objects if isinstance(objects, list) else []


def _mcq_item(category: str, objects: list[dict[str, Any]], salt: int) -> dict[str, Any]:
    """One multiple-choice item about the first object; correct when annotations were given."""
    obj = objects[0] if objects else {}
    shape = obj.get("shape") or obj.get("category") or "shape"
    colour = obj.get("colour") or COLOURS[salt % len(COLOURS)]
    if category == "count":
        n = sum(1 for o in objects if (o.get("shape") or o.get("category")) == shape) or 1
        options = [str(n + d) for d in (0, 1, 2, 3)] if n == 1 else [str(n + d) for d in (-1, 0, 1, 2)]
        return {"question": f"How many {shape}s are there in the image?", "options": options,
                "answer": str(n), "rationale": f"Counting the {shape}s gives {n}."}
    if category == "existence":
        return {"question": f"Is there a {colour} {shape} in the image?", "options": ["yes", "no"],
                "answer": "yes", "rationale": f"A {colour} {shape} is listed among the objects."}
    if category == "size":
        size = obj.get("size") or "small"
        return {"question": f"What size is the {colour} {shape}?", "options": ["small", "large"],
                "answer": size, "rationale": f"The {colour} {shape} is {size}."}
    if category == "shape":
        shapes = ["circle", "square", "triangle"]
        return {"question": f"What shape is the {colour} object?", "options": shapes,
                "answer": shape if shape in shapes else shapes[0], "rationale": f"The {colour} object is a {shape}."}
    if category == "spatial" and len(objects) >= 2:
        other = objects[1].get("shape") or objects[1].get("category") or "object"
        return {"question": f"Where is the {shape} relative to the {other}?",
                "options": ["left of", "right of", "above", "below"], "answer": "left of",
                "rationale": f"The {shape} appears first from the left."}
    colours = [colour] + [c for c in COLOURS if c != colour][:3]
    rotation = salt % 4
    colours = colours[rotation:] + colours[:rotation]
    return {"question": f"What colour is the {shape}?", "options": colours, "answer": colour,
            "rationale": f"The {shape} is {colour}."}


# ---------------------------------------------------------------- evolution (MMEvol) prompts

GOOD_REASON = "The child needs the small circle too.\nIt is harder."


def tagged_json(text: str, tag: str) -> Any:
    match = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return json.loads(match.group(1)) if match else None


def _evolved(parent, operator):
    """The fake model's child of `parent`: the parent's question with the operator's words added."""
    question, answer = parent["question"], parent["answer"]
    if "SKIPME" in question:
        return "Skip"
    if "BADANSWER" in question:
        return json.dumps({"question": question + " (finer)", "options": parent["options"],
                           "answer": "not an option", "rationale": "."})
    if operator == "interaction" and "FOLLOW" in question:
        return json.dumps({"format": "mcq", "follow_up": True, "question": "Is it the only one of that colour?",
                           "options": ["yes", "no"], "answer": "yes", "rationale": "No other object shares it."})
    if operator == "interaction":  # another format
        if parent["format"] == "mcq":
            return json.dumps({"format": "short", "question": question + " Answer in a full sentence.",
                               "answer": f"The answer is {answer}.", "rationale": "."})
        return json.dumps({"format": "mcq", "question": question + " Pick one.",
                           "options": [answer, "None of these."], "answer": answer, "rationale": "."})
    item = {"question": f"{question} ({operator})", "answer": answer, "rationale": "."}
    if parent["format"] == "mcq":
        item["options"] = parent["options"]
    if operator == "perception":  # fenced, as models often do: repaired, not rejected
        return "```json\n" + json.dumps(item) + "\n```"
    return json.dumps(item)


def _judged(child):
    question = child["question"]
    if "TRUNCATE" in question:
        return '{"improved": tr', "length"
    if "GARBAGE" in question:
        return "The child looks fine to me.", "stop"
    verdict = {"improved": "NOGAIN" not in question, "correct": "WRONG" not in question,
               "difficulty_parent": 3, "difficulty_child": 3 if "EQUAL" in question else 6, "reason": GOOD_REASON}
    return json.dumps(verdict), "stop"


def evolution_reply(text: str) -> tuple[str, str] | None:
    """The reply to an evolution prompt (a <parent> block) or a judge prompt (<parent> and <child>);
    None for any other prompt. Markers in the parent's question script the fake model: SKIPME,
    BADANSWER, FOLLOW (evolution); TRUNCATE, GARBAGE, NOGAIN, WRONG, EQUAL (the judge)."""
    parent, child = tagged_json(text, "parent"), tagged_json(text, "child")
    if parent is None:
        return None
    if child is not None:
        return _judged(child)
    operator = re.search(r"Evolution operator: (?:[\w-]+ )?(\w+)\.", text).group(1)
    return _evolved(parent, operator), "stop"



def build_reply(messages: list[dict[str, Any]], key: str, config: FaultConfig) -> tuple[str, str]:
    """(reply text, finish_reason) for a chat request, following what the prompt asks for."""
    text = _user_text(messages)
    evolved = evolution_reply(text)
    if evolved is not None:
        return evolved
    if "<current_template>" in text:  # the prompt-optimisation request: return a revised template
        current = re.search(r"<current_template>\n?(.*?)</current_template>", text, re.S)
        body = current.group(1) if current else "{{ question }}\n"
        revised = body.replace("Rules:", "Rules:\n0. Never ask about an object the image information does not list.", 1)
        return f"Here is the revision.\n<template>\n{revised}</template>\n", "stop"
    if _fraction(key, "length") < config.finish_reason_length_rate:
        return '[{"question": "What colour', "length"
    if _fraction(key, "skip") < config.skip_rate:
        return "Skip", "stop"
    if _fraction(key, "broken") < config.broken_rate:
        return "I am sorry, I cannot produce JSON for this image.", "stop"
    category = (re.search(r"Question type: (\w+)", text) or [None, "colour"])[1]
    data_type = (re.search(r"Data type: (\w+)", text) or [None, "mcq"])[1]
    objects = _objects(text)
    salt = int(key[:4], 16)
    item = _mcq_item(category, objects, salt)
    if data_type == "short":
        item = {"question": item["question"].replace("?", "? Answer in a full sentence."),
                "answer": f"{item['rationale']}"}
    elif data_type == "conversation":
        item = {"conversations": [
            {"role": "user", "content": item["question"]},
            {"role": "assistant", "content": item["rationale"]},
            {"role": "user", "content": "Are you sure?"},
            {"role": "assistant", "content": f"Yes. {item['rationale']}"},
        ]}
    items = [item]
    messy = _fraction(key, "messy")
    if messy < config.messy_rate / 3:
        return "```json\n" + json.dumps(items, indent=1) + "\n```", "stop"
    if messy < 2 * config.messy_rate / 3:
        return json.dumps(items)[:-1].rstrip("}") + "},]", "stop"  # trailing comma
    if messy < config.messy_rate:
        return "Sure! " + json.dumps(item), "stop"  # a single object, not a list
    return json.dumps(items), "stop"


def _completion(model: str, content: str, finish_reason: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    prompt_chars = len(_user_text(messages))
    images = sum(1 for m in messages if isinstance(m.get("content"), list)
                 for p in m["content"] if p.get("type") == "image_url")
    prompt_tokens = prompt_chars // 4 + 85 * images
    completion_tokens = max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-{hashlib.sha256(content.encode()).hexdigest()[:12]}",
        "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class OpenAIServer:
    """The server; `start()` runs it on 127.0.0.1 (free port by default) in a background thread."""

    def __init__(self, config: FaultConfig | None = None, port: int = 0) -> None:
        self.config = config or FaultConfig()
        self.counters = Counters()
        self.port = port
        self._rng = random.Random(self.config.seed)
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- lifecycle -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._get_batch)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_reset", self._reset)
        return app

    async def start_async(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def start(self) -> "OpenAIServer":
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="openai-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test OpenAI server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def reset(self) -> None:
        self.counters = Counters()

    # --- handlers --------------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        if self.config.expected_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.config.expected_key}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            self.counters.unauthorised += 1
            # Like OpenAI, echo a masked form of the key: the client must keep even that out of its records.
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
            masked = f"{sent[:6]}***{sent[-4:]}" if len(sent) > 10 else "***"
            return web.json_response({"error": {"message": f"Incorrect API key provided: {masked}. "
                                                           f"Full key for debugging: {sent}",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}},
                                     status=401)
        body = await request.json()
        messages = body.get("messages") or []
        key = content_key(messages)
        counters = self.counters
        counters.attempts[key] += 1
        counters.texts[key] = _user_text(messages)[-200:]
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            if _fraction(key, "failing") < self.config.failing_rate:
                counters.faults[f"status_{self.config.failing_status}"] += 1
                return web.json_response({"error": {"message": "this request always fails", "type": "server_error"}},
                                         status=self.config.failing_status)
            if self._rng.random() < self.config.fault_rate:
                kind = self._rng.choice(self.config.fault_kinds)
                counters.faults[kind] += 1
                return await self._fault(kind)
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
            content, finish_reason = build_reply(messages, key, self.config)
            counters.successes[key] += 1
            return web.json_response(_completion(body.get("model", "test-model"), content, finish_reason, messages))
        finally:
            counters.in_flight -= 1

    async def _fault(self, kind: str) -> web.StreamResponse:
        if kind == "429":
            return web.json_response({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                                     status=429, headers={"Retry-After": "0"})
        if kind == "500":
            return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
        if kind == "timeout":
            await asyncio.sleep(self.config.timeout_sleep)
            return web.json_response({"error": {"message": "gateway timeout"}}, status=504)
        return web.Response(status=200, text="<html>upstream garbage {{{", content_type="application/json")

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        data = upload.file.read()
        file_id = f"file-{hashlib.sha256(data).hexdigest()[:16]}"
        self._files[file_id] = data
        return web.json_response({"id": file_id, "object": "file", "bytes": len(data),
                                  "created_at": int(time.time()), "filename": upload.filename,
                                  "purpose": form.get("purpose", "batch"), "status": "processed"})

    async def _file_content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self._files:
            return web.json_response({"error": {"message": f"no file {file_id}"}}, status=404)
        return web.Response(body=self._files[file_id], content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        batch_id = f"batch_{len(self._batches) + 1:04d}"
        self._batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "validating", "created_at": int(time.time()), "output_file_id": None,
            "error_file_id": None, "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0,
        }
        return web.json_response(self._public(self._batches[batch_id]))

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch = self._batches.get(request.match_info["batch_id"])
        if batch is None:
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        batch["_polls"] += 1
        if batch["status"] != "completed":
            if batch["_polls"] >= self.config.batch_polls_until_done:
                self._run_batch(batch)
            else:
                batch["status"] = "in_progress"
        return web.json_response(self._public(batch))

    def _run_batch(self, batch: dict[str, Any]) -> None:
        lines = self._files[batch["input_file_id"]].decode().splitlines()
        output = []
        for line in filter(None, lines):
            entry = json.loads(line)
            messages = entry["body"]["messages"]
            key = content_key(messages)
            self.counters.batch_successes[key] += 1
            content, finish_reason = build_reply(messages, key, self.config)
            output.append(json.dumps({"id": f"req_{key}", "custom_id": entry["custom_id"], "error": None,
                                      "response": {"status_code": 200, "request_id": key,
                                                   "body": _completion(entry["body"].get("model", "m"), content,
                                                                       finish_reason, messages)}}))
        data = ("\n".join(output) + "\n").encode()
        file_id = f"file-out-{batch['id']}"
        self._files[file_id] = data
        batch.update(status="completed", output_file_id=file_id,
                     request_counts={"total": len(output), "completed": len(output), "failed": 0})

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.counters.as_json())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    server = OpenAIServer(FaultConfig(latency=args.latency, fault_rate=args.fault_rate, seed=args.seed), args.port)

    async def serve() -> None:
        await server.start_async()
        print(f"listening on {server.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

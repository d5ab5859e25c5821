"""Talking to an OpenAI-compatible chat endpoint: concurrently, politely, and without losing work.

Works with OpenAI itself and any server speaking its API (vLLM, SGLang,
llama.cpp server, ollama), through the official `openai` client pointed at
`base_url`. What this module guarantees:

- Journal first: a request whose key already has a good reply in the journal
  is never sent; a reply is written to the journal the moment it arrives.
- Concurrency adapts (AIMD): the number of requests in flight is halved on a
  429 and raised by about one per window of successes, between bounds.
  Optional requests-per-minute and tokens-per-minute caps sit on top.
- Faults are retried with exponential backoff and full jitter (honouring
  Retry-After): 429, 5xx, 408/409, timeouts, connection errors, malformed
  bodies and empty replies. After `max_attempts` the request is recorded as
  failed with its reason and the run goes on. Finish reasons `length` and
  `content_filter` are failures too (not retried: the same request would be
  cut again).
- A circuit breaker stops a teacher that keeps failing: `max_consecutive_failures`
  requests in a row failed for good, or every request of the run failed, raises
  `CircuitBreakerOpen` naming the endpoint, the count and the status, so the
  stage fails and publishes nothing (instead of an iteration built from errors).
- The API key is read from the environment variable that params name
  (`config.OpenAIConfig.api_key`), and is redacted from every error text before it is stored or logged.
- Token usage, request counts and (with a price table) cost are accumulated
  in `Usage`; a progress bar shows done, failed and in-flight requests.
- Batch mode (`run_batch`) submits to the Batch API, records the batch id in
  the journal, and collects the results on this or a later run.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmloop.teachers.journal import Journal, default_path

if TYPE_CHECKING:
    from mmloop.config import OpenAIConfig

FAILING_FINISH_REASONS = ("length", "content_filter")
RETRYABLE_STATUS = (408, 409, 429)
# What a person should check when the breaker opens on these statuses.
STATUS_HINTS = {401: "the API key (environment variable {key_env})", 403: "the API key's permissions ({key_env})",
                404: "base_url and model", 429: "the endpoint's rate limits (lower concurrency, rpm or tpm)"}


class BatchPending(RuntimeError):
    """Raised when Batch API jobs are still running; rerun later to collect them."""


class CircuitBreakerOpen(RuntimeError):
    """The teacher keeps failing: the run stops before anything is built from its errors."""


def journal_path(config: "OpenAIConfig") -> Path:
    """Where the requests of this teacher are journaled (params generate.openai.journal)."""
    return Path(config.journal) if config.journal else default_path()


@dataclass(frozen=True)
class ChatRequest:
    key: str                         # journal key (mmloop.teachers.journal.request_key)
    messages: list[dict[str, Any]]
    label: str | None = None         # what the caller calls this request (a query sample_id)


@dataclass(frozen=True)
class ChatResult:
    key: str
    label: str | None
    ok: bool
    content: str | None
    finish_reason: str | None
    error: str | None                # the failure, redacted: "status_401: Incorrect API key provided: ..."
    from_journal: bool
    attempts: int
    reason: str | None = None        # the failure's kind alone: "status_401", "APITimeoutError", "finish_reason_length"


@dataclass
class Usage:
    """What a run cost: requests, tokens, retries, failures by reason."""

    requests: int = 0            # total requests in this call (hits included)
    sent: int = 0                # HTTP attempts made
    journal_hits: int = 0
    succeeded: int = 0
    failed: int = 0              # requests that failed for good (after their retries)
    retries: int = 0
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)  # failed attempts by kind

    def metrics(self, model: str, prices: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
        out = {
            "requests": self.requests, "sent": self.sent, "journal_hits": self.journal_hits,
            "succeeded": self.succeeded, "failed": self.failed, "retries": self.retries,
            "throttled": self.throttled, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "errors": dict(sorted(self.errors.items())),
        }
        if prices and model in prices:
            price = prices[model]
            out["cost_usd"] = round((self.prompt_tokens * price["input"]
                                     + self.completion_tokens * price["output"]) / 1e6, 6)
        return out


def check_prices(prices: dict[str, dict[str, float]] | None) -> None:
    """Before any request is paid for: each priced model names both its input and output price."""
    for model, price in (prices or {}).items():
        missing = [side for side in ("input", "output") if side not in price]
        if missing:
            raise ValueError(f"params.yaml: generate.openai.prices.{model} lacks {' and '.join(missing)} "
                             f"(USD per 1M tokens)")


# --- secrets ------------------------------------------------------------------------------------
_KEY_LIKE = re.compile(r"\b(sk|key|api)[-_][A-Za-z0-9*_\-]{6,}", re.I)


def redact(text: str, secret: str | None) -> str:
    """Remove the key (and key-shaped tokens, e.g. OpenAI's masked 'sk-ab***yz') from text."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


# --- images -------------------------------------------------------------------------------------
def image_data_url(path: str | os.PathLike, max_side: int | None = None) -> str:
    """A base64 PNG data URL, downscaled so its longer side is at most `max_side`."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as image:
        image.load()
        if max_side and max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=False)
            data = buffer.getvalue()
        elif image.format == "PNG":
            data = path.read_bytes()
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --- flow control -------------------------------------------------------------------------------
class AIMDLimiter:
    """Concurrency limit with additive increase (+1 per `limit` successes) and multiplicative decrease.

    One burst of 429s halves the limit once: a throttle only counts if the
    request started after the last decrease (same epoch), so twenty requests
    throttled by the same overload do not cut the limit twenty times.

    Hand-written because no maintained asyncio library adapts a concurrency limit to
    throttling (aiolimiter and the like cap a fixed rate).
    """

    def __init__(self, initial: int, minimum: int = 1, maximum: int = 64, decrease: float = 0.5) -> None:
        self.minimum, self.maximum, self.decrease = max(1, minimum), max(1, maximum), decrease
        self.limit = float(min(max(initial, self.minimum), self.maximum))
        self.in_flight = 0
        self.epoch = 0
        self.decreases = 0
        # FIFO hand-off: a release wakes exactly the waiters it has room for. (A Condition with
        # notify_all wakes every waiter on every release: quadratic, and it cost 10% throughput.)
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> int:
        if not self._waiters and self.in_flight < int(self.limit):
            self.in_flight += 1
            return self.epoch
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the releaser counted us in before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1
                self._wake()
            raise
        return self.epoch

    async def release(self, epoch: int, outcome: str) -> None:
        self.in_flight -= 1
        if outcome == "throttled" and epoch == self.epoch:
            self.limit = max(self.minimum, self.limit * self.decrease)
            self.epoch += 1
            self.decreases += 1
        elif outcome == "success":
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class WindowCap:
    """At most `limit` units (requests or tokens) in any sliding 60-second window.

    Not aiolimiter: its acquire refuses an amount above the capacity, and one prompt can
    exceed a small TPM cap; here such a request still goes, alone.
    """

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit, self.window = int(limit), window
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._used = 0

    async def acquire(self, amount: int = 1) -> None:
        amount = min(int(amount), self.limit)  # an oversize request still gets through, alone
        while True:
            now = time.monotonic()
            while self._events and self._events[0][0] <= now - self.window:
                self._used -= self._events.popleft()[1]
            if self._used + amount <= self.limit:
                # No await between the check and the append: asyncio makes this atomic.
                self._events.append((now, amount))
                self._used += amount
                return
            await asyncio.sleep(max(0.01, self._events[0][0] + self.window - now))


def estimate_tokens(messages: Sequence[dict[str, Any]], max_tokens: int | None) -> int:
    """A rough count for the TPM cap: 4 characters a token, 85 per image, plus the reply budget."""
    chars, images = 0, 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        else:
            for part in content or []:
                if part.get("type") == "image_url":
                    images += 1
                else:
                    chars += len(part.get("text", ""))
    return chars // 4 + 85 * images + int(max_tokens or 256)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is a floor (capped)."""
    delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


class _Progress:
    """done / failed / in-flight on one tqdm bar (quiet off a terminal)."""

    def __init__(self, total: int, desc: str) -> None:
        from mmloop.io import progress

        self.bar = progress(total=total, desc=desc, unit="req")
        self.done = self.failed = self.in_flight = 0

    def update(self, *, done: int = 0, failed: int = 0, in_flight: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.in_flight += in_flight
        if done or failed:
            self.bar.update(done + failed)
        self.bar.set_postfix(done=self.done, failed=self.failed, in_flight=self.in_flight, refresh=False)

    def close(self) -> None:
        self.bar.close()


# --- the circuit breaker ------------------------------------------------------------------------
class CircuitBreaker:
    """Counts requests that failed for good (after their retries) in a row; a success resets it.

    AIMD alone slows down under sustained failures but never gives up, so an endpoint that
    rejects everything (a wrong key, an unknown model, a spent quota) would cost the whole run
    and leave the stage nothing but failures to publish (NeMo Data Designer #575 stalls
    silently under sustained 429s the same way). The breaker turns that into an error.
    Not pybreaker and the like: they guard one call at a time and reopen after a timeout;
    this ends one run, and its error lists the statuses of the whole streak.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak: list[ChatResult] = []
        self.opened = False

    def record(self, result: ChatResult) -> bool:
        """True when this result opens the breaker."""
        if self.opened:
            return False  # requests in flight when it opened: the first error already stops the run
        if result.ok:
            self.streak.clear()
            return False
        self.streak.append(result)
        self.opened = len(self.streak) >= self.limit
        return self.opened


def endpoint_url(client: Any, path: str) -> str:
    """The URL requests go to (the client resolves a null base_url, e.g. from OPENAI_BASE_URL)."""
    base = str(getattr(client, "base_url", "") or "the client's default base URL")
    return f"{base.rstrip('/')}/{path}"


# --- the runner ---------------------------------------------------------------------------------
class Runner:
    """Sends chat requests through the journal, limiter, caps, retries and the circuit breaker."""

    def __init__(self, config: "OpenAIConfig", journal: Journal, *, client: Any = None,
                 desc: str = "teacher") -> None:
        self.config = config
        self.journal = journal
        self.usage = Usage()
        self.desc = desc
        self._client = client
        self._secret: str | None = None
        self.limiter: AIMDLimiter | None = None
        self.breaker = CircuitBreaker(config.max_consecutive_failures)
        self.endpoint = ""
        check_prices(config.prices)

    def _make_client(self) -> Any:
        import openai

        self._secret = self.config.api_key()
        # The client's own retries are off: ours count attempts, honour the journal and drive AIMD.
        return openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self._secret, max_retries=0,
                                  timeout=self.config.timeout)

    def run(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return asyncio.run(self.run_async(requests))

    async def run_async(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        config = self.config
        self.usage.requests += len(requests)
        results: dict[int, ChatResult] = {}
        todo: list[tuple[int, ChatRequest]] = []
        for index, request in enumerate(requests):
            entry = self.journal.hit(request.key)
            if entry is not None:
                self.usage.journal_hits += 1
                self.usage.succeeded += 1
                results[index] = ChatResult(request.key, request.label, True, entry.content, entry.finish_reason,
                                            None, True, entry.attempts)
            else:
                todo.append((index, request))
        if todo:
            client = self._client or self._make_client()
            self.endpoint = endpoint_url(client, "chat/completions")
            self.limiter = AIMDLimiter(config.concurrency, config.min_concurrency, config.max_concurrency)
            rpm = WindowCap(config.rpm) if config.rpm else None
            tpm = WindowCap(config.tpm) if config.tpm else None
            self.breaker = CircuitBreaker(config.max_consecutive_failures)
            bar = _Progress(len(requests), self.desc)
            bar.update(done=len(results))
            tasks = [asyncio.ensure_future(self._send(client, request, rpm, tpm, bar, len(requests)))
                     for _, request in todo]
            try:
                outcomes = await asyncio.gather(*tasks)
            finally:
                # After the breaker opens, stop what is still waiting or in flight (a no-op otherwise).
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                bar.close()
                if self._client is None:
                    await client.close()
            for (index, _), result in zip(todo, outcomes):
                results[index] = result
        ordered = [results[index] for index in range(len(requests))]
        self._fail_if_nothing_answered(ordered)
        return ordered

    def _fail_if_nothing_answered(self, results: Sequence[ChatResult]) -> None:
        """A run shorter than the breaker's limit in which every request failed is a failing teacher too."""
        if results and not any(result.ok for result in results):
            raise self.breaker_error(results, len(results), len(results), trigger="every request of the run failed")

    def breaker_error(self, failures: Sequence[ChatResult], finished: int, total: int, *,
                      trigger: str) -> CircuitBreakerOpen:
        """The error that stops a failing teacher: endpoint, count, statuses, and what to check."""
        config = self.config
        kinds = collections.Counter(result.reason or "unknown" for result in failures)
        statuses = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())
        codes = [int(kind.removeprefix("status_")) for kind in kinds if re.fullmatch(r"status_\d+", kind)]
        checks = [STATUS_HINTS[code].format(key_env=config.api_key_env) for code in codes if code in STATUS_HINTS]
        check = "; ".join(dict.fromkeys(checks)) or "the endpoint (base_url), the model and the network"
        return CircuitBreakerOpen(
            f"teacher failing: {len(failures)} requests in a row to {self.endpoint} (model {config.model}) failed "
            f"({statuses}); last error: {failures[-1].error}. Circuit breaker open ({trigger}) after {finished} "
            f"of {total} requests; nothing is published. Check {check}, then rerun: replies already received "
            f"are kept in the journal.")

    async def _send(self, client: Any, request: ChatRequest, rpm: WindowCap | None, tpm: WindowCap | None,
                    bar: _Progress, total: int) -> ChatResult:
        breaker = self.breaker
        result = await self._attempts(client, request, rpm, tpm, bar)
        if breaker.record(result):
            trigger = f"generate.openai.max_consecutive_failures is {breaker.limit}"
            raise self.breaker_error(breaker.streak, bar.done + bar.failed, total, trigger=trigger)
        return result

    async def _attempts(self, client: Any, request: ChatRequest, rpm: WindowCap | None, tpm: WindowCap | None,
                        bar: _Progress) -> ChatResult:
        """Send until a reply or a final failure. The loop is ours, not tenacity's or the openai
        client's (whose retries are off): between attempts the limiter slot is handed back and
        every attempt's outcome drives AIMD and the usage counts."""
        import openai

        config, usage, limiter = self.config, self.usage, self.limiter
        generation = config.generation
        estimate = estimate_tokens(request.messages, config.max_tokens or config.max_completion_tokens)
        reason, error = "not_sent", "not sent"
        for attempt in range(1, config.max_attempts + 1):
            if rpm:
                await rpm.acquire(1)
            if tpm:
                await tpm.acquire(estimate)
            epoch = await limiter.acquire()
            if self.breaker.opened:  # opened while this request waited: send nothing more
                await limiter.release(epoch, "error")
                raise asyncio.CancelledError
            bar.update(in_flight=1)
            outcome, retry_after, response = "error", None, None
            try:
                usage.sent += 1
                response = await client.chat.completions.create(
                    model=config.model, messages=request.messages, **generation)
                outcome = "success"
            except openai.RateLimitError as err:
                outcome, retry_after = "throttled", _retry_after(err)
                usage.throttled += 1
                reason, error = self._describe(err)
            except openai.APIStatusError as err:
                reason, error = self._describe(err)
                if err.status_code < 500 and err.status_code not in RETRYABLE_STATUS:
                    # 400/401/403/404: sending again cannot help.
                    usage.errors[reason] += 1
                    return self._fail(request, reason, error, attempt, bar)
                retry_after = _retry_after(err)
            except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as err:
                # Timeouts, refused connections, and bodies that are not a completion.
                reason, error = self._describe(err)
            finally:
                if outcome != "success" or response is None:
                    await limiter.release(epoch, outcome)
                    bar.update(in_flight=-1)
            if response is not None:
                await limiter.release(epoch, "success")
                bar.update(in_flight=-1)
                result = self._accept(request, response, attempt)
                if result is not None:
                    bar.update(**({"done": 1} if result.ok else {"failed": 1}))
                    return result
                reason = error = "empty_response"
            usage.errors[reason] += 1
            if attempt < config.max_attempts:
                usage.retries += 1
                await asyncio.sleep(backoff_delay(attempt, config.backoff_base, config.backoff_max, retry_after))
        return self._fail(request, reason, f"gave up after {config.max_attempts} attempts: {error}",
                          config.max_attempts, bar)

    def _accept(self, request: ChatRequest, response: Any, attempt: int) -> ChatResult | None:
        """Journal a reply as it arrives. None means "empty, try again"."""
        usage, model = self.usage, self.config.model
        choices = getattr(response, "choices", None) or []
        counts = getattr(response, "usage", None)
        prompt_tokens = int(getattr(counts, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(counts, "completion_tokens", 0) or 0)
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        choice = choices[0] if choices else None
        content = (choice.message.content if choice is not None and choice.message is not None else None) or ""
        finish_reason = getattr(choice, "finish_reason", None)
        if finish_reason in FAILING_FINISH_REASONS:
            reason = f"finish_reason_{finish_reason}"
            self.journal.record_failed(request.key, error=reason, model=model, label=request.label,
                                       content=content, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                                       completion_tokens=completion_tokens, attempts=attempt)
            usage.failed += 1
            usage.errors[reason] += 1
            return ChatResult(request.key, request.label, False, content, finish_reason, reason, False, attempt,
                              reason)
        if not content.strip():
            return None
        self.journal.record_ok(request.key, content=content, finish_reason=finish_reason, model=model,
                               label=request.label, prompt_tokens=prompt_tokens,
                               completion_tokens=completion_tokens, attempts=attempt)
        usage.succeeded += 1
        return ChatResult(request.key, request.label, True, content, finish_reason, None, False, attempt)

    def _fail(self, request: ChatRequest, reason: str, error: str, attempts: int, bar: _Progress) -> ChatResult:
        self.journal.record_failed(request.key, error=error, model=self.config.model, label=request.label,
                                   attempts=attempts)
        self.usage.failed += 1
        bar.update(failed=1)
        return ChatResult(request.key, request.label, False, None, None, error, False, attempts, reason)

    def _describe(self, error: Exception) -> tuple[str, str]:
        """(kind, a short secret-free reason): ('status_429', 'status_429: message')."""
        status = getattr(error, "status_code", None)
        kind = f"status_{status}" if status is not None else type(error).__name__
        message = str(getattr(error, "message", None) or error).replace("\n", " ")[:200]
        return kind, redact(f"{kind}: {message}", self._secret)

    # --- Batch API -------------------------------------------------------------------------------
    def run_batch(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Serve hits, collect finished batches, submit what is missing, poll up to `batch.wait` seconds.

        Resumable: submitted keys are journaled as pending with their batch id
        before this returns, so a later run collects instead of resubmitting.
        Raises BatchPending when results are still outstanding.
        """
        import openai

        config = self.config
        self._secret = config.api_key()
        client = self._client or openai.OpenAI(base_url=config.base_url, api_key=self._secret,
                                               max_retries=3, timeout=config.timeout)
        self.endpoint = endpoint_url(client, "batches")
        self.usage.requests += len(requests)
        by_key = {request.key: request for request in requests}
        self._collect_batches(client)
        pending = {key for keys in self.journal.pending_batches().values() for key in keys}
        missing = [r for r in by_key.values() if self.journal.hit(r.key) is None and r.key not in pending]
        if missing:
            self._submit_batch(client, missing)
        deadline = time.monotonic() + config.batch.wait
        while self._outstanding(by_key) and time.monotonic() < deadline:
            time.sleep(min(config.batch.poll_interval, max(0.0, deadline - time.monotonic())))
            self._collect_batches(client)
        outstanding = self._outstanding(by_key)
        if outstanding:
            batches = sorted({self.journal.get(key).batch_id for key in outstanding})
            raise BatchPending(f"{len(outstanding)} requests still running in Batch API jobs {batches}; "
                               "rerun later to collect them (the journal remembers the job ids)")
        results = []
        for request in requests:
            entry = self.journal.get(request.key)
            ok = entry.is_hit
            self.usage.succeeded += ok
            self.usage.failed += not ok
            reason = None if ok else (entry.error or "empty_response").split(":")[0]
            results.append(ChatResult(request.key, request.label, ok, entry.content, entry.finish_reason,
                                      entry.error, True, entry.attempts, reason))
        self._fail_if_nothing_answered(results)
        return results

    def _outstanding(self, by_key: dict[str, ChatRequest]) -> list[str]:
        pending = self.journal.pending_batches()
        return [key for keys in pending.values() for key in keys if key in by_key]

    def _submit_batch(self, client: Any, requests: Sequence[ChatRequest]) -> str:
        config = self.config
        lines = "".join(json.dumps({"custom_id": r.key, "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": config.model, "messages": r.messages,
                                             **config.generation}}) + "\n" for r in requests)
        upload = client.files.create(file=("mmloop-batch.jsonl", lines.encode("utf-8")), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        self.usage.sent += 1
        self.journal.record_pending([(r.key, r.label) for r in requests], batch_id=batch.id, model=config.model)
        return batch.id

    def _collect_batches(self, client: Any) -> None:
        model = self.config.model
        for batch_id, keys in self.journal.pending_batches().items():
            batch = client.batches.retrieve(batch_id)
            if batch.status in ("failed", "expired", "cancelled"):
                for key in keys:  # failed rows are resubmitted by the next run
                    self.journal.record_failed(key, error=f"batch_{batch.status}", model=model)
                continue
            if batch.status != "completed":
                continue
            waiting = set(keys)
            for file_id in filter(None, (batch.output_file_id, batch.error_file_id)):
                for line in client.files.content(file_id).text.splitlines():
                    if line.strip():
                        self._record_batch_line(json.loads(line), waiting)
            for key in waiting:  # completed but absent from both files
                self.journal.record_failed(key, error="batch_missing_result", model=model)

    def _record_batch_line(self, line: dict[str, Any], waiting: set[str]) -> None:
        model = self.config.model
        key = line.get("custom_id")
        if key not in waiting:
            return
        waiting.discard(key)
        response = line.get("response") or {}
        body = response.get("body") or {}
        if line.get("error") or response.get("status_code") != 200:
            reason = redact(f"batch_error: {json.dumps(line.get('error') or body)[:200]}", self._secret)
            self.journal.record_failed(key, error=reason, model=model)
            return
        choice = (body.get("choices") or [{}])[0]
        content = (choice.get("message") or {}).get("content") or ""
        finish_reason = choice.get("finish_reason")
        counts = body.get("usage") or {}
        prompt_tokens, completion_tokens = int(counts.get("prompt_tokens", 0)), int(counts.get("completion_tokens", 0))
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        if finish_reason in FAILING_FINISH_REASONS or not content.strip():
            reason = f"finish_reason_{finish_reason}" if content.strip() else "empty_response"
            self.journal.record_failed(key, error=reason, model=model, content=content,
                                       finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                                       completion_tokens=completion_tokens)
        else:
            self.journal.record_ok(key, content=content, finish_reason=finish_reason, model=model,
                                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def run_chat(requests: Sequence[ChatRequest], config: "OpenAIConfig", journal: Journal, *,
             desc: str = "teacher") -> tuple[list[ChatResult], Usage]:
    """Send (or serve from the journal) every request; interactive or Batch API per `config.batch`."""
    runner = Runner(config, journal, desc=desc)
    results = runner.run_batch(requests) if config.batch.enabled else runner.run(requests)
    return results, runner.usage

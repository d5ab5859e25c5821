"""mmloop.teachers.llm against a real local OpenAI-compatible server that injects faults (tests/openai_server.py)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from mmloop.config import BatchApi, OpenAIConfig
from mmloop.teachers import llm
from mmloop.teachers.journal import FAILED, OK, Journal, request_key
from openai_server import FaultConfig, OpenAIServer, content_key

MODEL = "test-model"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    servers = []

    def start(**config):
        srv = OpenAIServer(FaultConfig(**config)).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def _config(url, **overrides):
    base = dict(model=MODEL, base_url=url, api_key_env=None, temperature=0.0, max_tokens=256, concurrency=8,
                max_concurrency=16, timeout=0.4, backoff_base=0.01, backoff_max=0.2, max_attempts=10)
    base.update(overrides)
    return OpenAIConfig(**base)


def _requests(n, prefix="item"):
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Question type: colour\nData type: mcq\n{prefix} {i}"}]
        out.append(llm.ChatRequest(request_key(MODEL, messages, {"temperature": 0.0}), messages, label=f"{prefix} {i}"))
    return out


def test_fault_storm_completes_with_nothing_lost_or_duplicated(server, tmp_path):
    srv = server(fault_rate=0.2, timeout_sleep=1.0, seed=7)
    requests = _requests(120)
    with Journal(tmp_path / "j.sqlite") as journal:
        runner = llm.Runner(_config(srv.url), journal)
        results = runner.run(requests)
        assert journal.counts() == {OK: 120}
    counters = srv.counters
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.label for r in results] == [r.label for r in requests]  # order kept, none lost
    # Every kind of fault happened, and yet each request content was answered exactly once.
    assert set(counters.faults) == {"429", "500", "timeout", "garbage"}
    assert sum(counters.faults.values()) >= 12
    contents = {content_key(r.messages) for r in requests}
    assert set(counters.successes) == contents
    assert max(counters.successes.values()) == 1
    assert runner.usage.sent == sum(counters.attempts.values())
    assert runner.usage.retries >= sum(counters.faults.values())
    assert runner.usage.throttled == counters.faults["429"]
    assert runner.usage.prompt_tokens > 0 and runner.usage.completion_tokens > 0


def test_rerun_with_unchanged_inputs_sends_nothing(server, tmp_path):
    srv = server()
    requests = _requests(10)
    with Journal(tmp_path / "j.sqlite") as journal:
        first = llm.Runner(_config(srv.url), journal)
        first.run(requests)
        attempts = sum(srv.counters.attempts.values())
        again = llm.Runner(_config(srv.url), journal)
        results = again.run(requests)
    assert attempts == 10
    assert sum(srv.counters.attempts.values()) == 10
    assert again.usage.sent == 0 and again.usage.journal_hits == 10
    assert all(r.from_journal and r.ok for r in results)
    assert again.usage.metrics(MODEL, {MODEL: {"input": 1.0, "output": 1.0}})["cost_usd"] == 0


WORKER = textwrap.dedent("""
    import sys
    from mmloop.config import OpenAIConfig
    from mmloop.teachers import llm
    from mmloop.teachers.journal import Journal, request_key
    url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reqs = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Question type: colour\\nData type: mcq\\nitem {i}"}]
        reqs.append(llm.ChatRequest(request_key("test-model", messages, {"temperature": 0.0}), messages, label=str(i)))
    config = OpenAIConfig(model="test-model", base_url=url, api_key_env=None, concurrency=4, max_concurrency=4,
                          temperature=0.0, timeout=5.0, backoff_base=0.01, max_attempts=5)
    with Journal(path) as journal:
        llm.Runner(config, journal).run(reqs)
""")


def test_killed_run_resends_no_completed_request(server, tmp_path):
    srv = server(latency=0.05)
    journal_path = tmp_path / "j.sqlite"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    n = 100
    process = subprocess.Popen([sys.executable, str(script), srv.url, str(journal_path), str(n)],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and done < 30:
        time.sleep(0.05)
        if journal_path.exists():
            with Journal(journal_path) as peek:
                done = peek.counts().get(OK, 0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 30 <= done < n, f"the worker was not killed halfway ({done} of {n} done)"

    with Journal(journal_path) as journal:
        completed = {entry.label for entry in journal.entries(OK)}
    assert len(completed) < n
    first_run_successes = dict(srv.counters.successes)
    srv.reset()

    rerun = subprocess.run([sys.executable, str(script), srv.url, str(journal_path), str(n)],
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert rerun.returncode == 0
    with Journal(journal_path) as journal:
        assert journal.counts() == {OK: n}
    second_run = srv.counters.attempts
    completed_contents = {content_key([{"role": "user", "content":
                                        f"Question type: colour\nData type: mcq\nitem {label}"}]) for label in completed}
    resent = completed_contents & set(second_run)
    assert resent == set(), f"{len(resent)} completed requests were sent again"
    # Only what was missing went out, each once.
    assert len(second_run) == n - len(completed)
    assert max(second_run.values()) == 1
    # Work answered before the kill but not yet journaled can only be the few in flight (concurrency 4).
    assert len(set(first_run_successes) - completed_contents) <= 4


def test_length_and_content_filter_are_failures_and_are_not_served(server, tmp_path):
    srv = server(finish_reason_length_rate=0.5)
    requests = _requests(10)
    with Journal(tmp_path / "j.sqlite") as journal:
        runner = llm.Runner(_config(srv.url), journal)
        results = runner.run(requests)
        cut = [r for r in results if not r.ok]
        assert 0 < len(cut) < 10
        assert all(r.error == r.reason == "finish_reason_length" and r.attempts == 1 for r in cut)
        assert journal.counts() == {OK: 10 - len(cut), FAILED: len(cut)}
        assert journal.hit(cut[0].key) is None
        llm.Runner(_config(srv.url), journal).run(requests)  # failed entries are retried by the next run
    assert sum(srv.counters.attempts.values()) == 10 + len(cut)
    assert runner.usage.errors["finish_reason_length"] == len(cut)


def test_bounded_retries_record_the_failure_and_the_run_goes_on(server, tmp_path):
    srv = server(failing_rate=0.5, failing_status=500)
    requests = _requests(8)
    with Journal(tmp_path / "j.sqlite") as journal:
        runner = llm.Runner(_config(srv.url, max_attempts=3), journal)
        results = runner.run(requests)
        entries = {entry.key: entry for entry in journal.entries()}
    failed = [r for r in results if not r.ok]
    assert 0 < len(failed) < 8 and runner.usage.failed == len(failed)
    for result in failed:
        assert result.error.startswith("gave up after 3 attempts: status_500") and result.reason == "status_500"
        assert entries[result.key].status == FAILED
        assert srv.counters.attempts[content_key(next(r.messages for r in requests if r.key == result.key))] == 3
    assert sum(srv.counters.attempts.values()) == 3 * len(failed) + 8 - len(failed)
    assert runner.usage.errors == {"status_500": 3 * len(failed)}


def test_a_rejected_key_opens_the_breaker_naming_status_endpoint_and_count(server, tmp_path, monkeypatch):
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("MMLOOP_TEST_KEY", secret)
    srv = server(expected_key="sk-the-right-one-000000")
    with Journal(tmp_path / "j.sqlite") as journal:
        runner = llm.Runner(_config(srv.url, api_key_env="MMLOOP_TEST_KEY", max_consecutive_failures=20), journal)
        with pytest.raises(llm.CircuitBreakerOpen) as raised:
            runner.run(_requests(100))
    message = str(raised.value)
    assert "20 requests in a row" in message and "status_401 x20" in message
    assert f"{srv.url}/chat/completions" in message and MODEL in message
    assert "max_consecutive_failures is 20" in message and "MMLOOP_TEST_KEY" in message
    assert secret not in message and secret[-4:] not in message
    # The breaker stopped the run: what was in flight when it opened, and nothing after.
    assert 20 <= srv.counters.unauthorised <= 20 + 8


def test_a_short_run_in_which_every_request_fails_opens_the_breaker(server, tmp_path):
    srv = server(fault_rate=1.0, fault_kinds=("500",))
    with Journal(tmp_path / "j.sqlite") as journal:
        with pytest.raises(llm.CircuitBreakerOpen, match=r"2 requests in a row .* failed \(status_500 x2\)") as raised:
            llm.Runner(_config(srv.url, max_attempts=3), journal).run(_requests(2))
        assert journal.counts() == {FAILED: 2}  # recorded, and sent again by the next run
    assert "every request of the run failed" in str(raised.value)
    assert "last error: gave up after 3 attempts: status_500" in str(raised.value)
    assert sum(srv.counters.attempts.values()) == 6


def test_a_success_resets_the_breaker_count():
    def result(ok):
        return llm.ChatResult("k", None, ok, "x" if ok else None, None, None if ok else "status_500: e", False, 1,
                              None if ok else "status_500")

    breaker = llm.CircuitBreaker(3)
    assert [breaker.record(result(ok)) for ok in (False, False, True, False, False)] == [False] * 5
    assert breaker.record(result(False)) is True and len(breaker.streak) == 3


def test_api_key_stays_out_of_journal_errors_and_metrics(server, tmp_path, monkeypatch, capfd):
    secret = f"sk-test-{uuid.uuid4().hex}"
    srv = server(expected_key="sk-the-right-one-000000")
    monkeypatch.setenv("MMLOOP_TEST_KEY", secret)
    with Journal(tmp_path / "j.sqlite") as journal:
        runner = llm.Runner(_config(srv.url, api_key_env="MMLOOP_TEST_KEY"), journal)
        with pytest.raises(llm.CircuitBreakerOpen) as raised:
            runner.run(_requests(2))
        errors = [entry.error for entry in journal.entries()]
    metrics = json.dumps(runner.usage.metrics(MODEL))
    assert srv.counters.unauthorised == 2  # the server saw the key and echoed it back in its error
    assert len(errors) == 2 and all("status_401" in error for error in errors)
    assert all(secret not in text and secret[-4:] not in text for text in errors + [str(raised.value)])
    out, err = capfd.readouterr()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in metrics and secret not in out + err


def test_missing_api_key_env_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MMLOOP_ABSENT_KEY", raising=False)
    config = _config("http://127.0.0.1:9/v1", api_key_env="MMLOOP_ABSENT_KEY")
    with Journal(tmp_path / "j.sqlite") as journal, pytest.raises(RuntimeError, match="MMLOOP_ABSENT_KEY"):
        llm.Runner(config, journal).run(_requests(1))
    with pytest.raises(ValueError, match="api_key_env"):
        OpenAIConfig.model_validate({"model": "m", "api_key": "sk-oops"})


def test_aimd_halves_once_per_burst_and_grows_slowly():
    async def scenario():
        limiter = llm.AIMDLimiter(8, minimum=1, maximum=16)
        epochs = [await limiter.acquire() for _ in range(4)]
        for epoch in epochs:  # four 429s from the same overload: one decrease
            await limiter.release(epoch, "throttled")
        assert limiter.limit == 4 and limiter.decreases == 1
        for _ in range(4):
            await limiter.release(await limiter.acquire(), "success")
        assert 4.9 < limiter.limit < 5.1  # about +1 per `limit` successes
        return limiter

    asyncio.run(scenario())


def test_429_storm_cuts_concurrency(server, tmp_path):
    srv = server(fault_rate=0.5, fault_kinds=("429",), seed=3)
    with Journal(tmp_path / "j.sqlite") as journal:
        runner = llm.Runner(_config(srv.url, concurrency=16, max_attempts=20), journal)
        results = runner.run(_requests(60))
    assert all(r.ok for r in results)
    assert runner.limiter.decreases >= 2
    assert runner.usage.throttled == srv.counters.faults["429"]


def test_rpm_cap_spreads_requests():
    async def scenario():
        cap = llm.WindowCap(3, window=0.3)
        start = time.monotonic()
        for _ in range(7):
            await cap.acquire(1)
        return time.monotonic() - start

    assert asyncio.run(scenario()) >= 0.55  # 7 requests at 3 per 0.3 s need two full windows


def test_backoff_grows_and_respects_retry_after():
    delays = [max(llm.backoff_delay(attempt, 1.0, 100.0) for _ in range(200)) for attempt in (1, 4)]
    assert delays[0] <= 1.0 and delays[1] > 2.0
    assert llm.backoff_delay(1, 0.01, 5.0, retry_after=3.0) == 3.0
    assert llm.backoff_delay(1, 0.01, 5.0, retry_after=60.0) == 5.0


def test_batch_mode_submits_records_job_and_collects_on_a_later_run(server, tmp_path):
    srv = server(batch_polls_until_done=2)
    requests = _requests(5)
    config = _config(srv.url, batch=BatchApi(enabled=True, wait=0.0))
    with Journal(tmp_path / "j.sqlite") as journal:
        with pytest.raises(llm.BatchPending, match="batch_0001"):
            llm.Runner(config, journal).run_batch(requests)
        assert set(journal.pending_batches()) == {"batch_0001"}
    polling = _config(srv.url, batch=BatchApi(enabled=True, wait=10.0, poll_interval=0.05))
    with Journal(tmp_path / "j.sqlite") as journal:  # a later run: polls and collects, does not resubmit
        runner = llm.Runner(polling, journal)
        results = runner.run_batch(requests)
        assert journal.counts() == {OK: 5}
    assert all(r.ok for r in results)
    assert sum(srv.counters.batch_successes.values()) == 5 and max(srv.counters.batch_successes.values()) == 1
    assert sum(srv.counters.attempts.values()) == 0  # nothing went through the interactive endpoint
    with Journal(tmp_path / "j.sqlite") as journal:
        again = llm.Runner(config, journal)
        again.run_batch(requests)
    assert again.usage.sent == 0

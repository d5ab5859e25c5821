"""mmloop.teachers.journal: what is served, what is kept, and that a killed writer leaves whole rows."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mmloop.teachers.journal import FAILED, OK, PENDING, Journal, request_key

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "hello"}]


def test_request_key_covers_model_messages_params_and_prompt():
    base = request_key("m", MESSAGES, {"temperature": 0}, "sha")
    assert base == request_key("m", [dict(MESSAGES[0])], {"temperature": 0}, "sha")
    assert len({base, request_key("m2", MESSAGES, {"temperature": 0}, "sha"),
                request_key("m", [{"role": "user", "content": "hello!"}], {"temperature": 0}, "sha"),
                request_key("m", MESSAGES, {"temperature": 1}, "sha"),
                request_key("m", MESSAGES, {"temperature": 0}, "other")}) == 5


def test_only_successful_non_empty_replies_are_hits(tmp_path):
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_ok("good", content="[1]", finish_reason="stop", prompt_tokens=3, completion_tokens=2)
        journal.record_ok("blank", content="  ", finish_reason="stop")
        journal.record_failed("bad", error="status_500: boom")
        assert journal.hit("good").content == "[1]"
        assert journal.hit("blank") is None
        assert journal.hit("bad") is None and journal.get("bad").error == "status_500: boom"
        assert journal.hit("missing") is None
        # A late failure never erases paid work; a later success replaces a failure.
        journal.record_failed("good", error="late timeout")
        assert journal.hit("good").content == "[1]"
        journal.record_ok("bad", content="ok now", finish_reason="stop")
        assert journal.hit("bad").error is None
        assert journal.counts() == {OK: 3}


def test_pending_batches_are_tracked_and_never_override_success(tmp_path):
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_ok("done", content="x", finish_reason="stop")
        journal.record_pending([("done", None), ("a", "q1"), ("b", "q2")], batch_id="batch_1", model="m")
        assert journal.pending_batches() == {"batch_1": ["a", "b"]}
        assert journal.hit("done") is not None and journal.get("a").status == PENDING
        journal.record_failed("a", error="batch_failed")
        assert journal.pending_batches() == {"batch_1": ["b"]} and journal.get("a").status == FAILED


def test_journal_uses_wal_and_is_readable_while_open(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        journal.record_ok("k", content="x", finish_reason="stop")
        reader = sqlite3.connect(path)
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert reader.execute("SELECT content FROM requests WHERE key='k'").fetchone() == ("x",)
        reader.close()


def test_a_killed_writer_leaves_only_whole_rows(tmp_path):
    path = tmp_path / "j.sqlite"
    writer = textwrap.dedent(f"""
        from mmloop.teachers.journal import Journal
        journal = Journal({str(path)!r})
        i = 0
        while True:
            journal.record_ok(f"k{{i}}", content="reply " * 50 + str(i), finish_reason="stop", completion_tokens=i)
            i += 1
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 30
    count = 0
    while time.monotonic() < deadline and count < 50:
        time.sleep(0.05)
        if path.exists():
            try:
                with Journal(path) as peek:
                    count = peek.counts().get(OK, 0)
            except sqlite3.OperationalError:
                pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    with Journal(path) as journal:
        entries = journal.entries()
    assert len(entries) >= 50
    for entry in entries:
        index = int(entry.key[1:])
        assert entry.content.endswith(str(index)) and entry.completion_tokens == index

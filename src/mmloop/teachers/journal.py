"""The request journal: every paid or slow LLM request, keyed by a hash of what was asked.

Teacher runs cost money and hours, so a response is written to disk the
moment it arrives, and a rerun (after a crash, a kill, or a DVC rerun with the
same inputs) looks each request up here first and sends only what is missing.

Storage is the standard library's SQLite rather than a cache library such as diskcache,
because runs query the journal by status and by Batch API job, not only by key.
It is one SQLite file in WAL mode with `synchronous=NORMAL`: every `record`
is its own committed transaction, so a process killed at any instant leaves
either the whole row or nothing (in WAL mode NORMAL survives any process crash;
only a power cut can drop the last commits, and FULL's fsync per reply blocked
the event loop enough to cost several percent of throughput), and readers (a progress monitor, a test) never
block the writer. The journal lives outside DVC outputs (default
`.mmloop/journal/`, git-ignored) because DVC deletes a stage's outputs before
rerunning it, and the journal must survive exactly that.

Only successful, non-empty responses are served as hits. Failures are kept
(status "failed", with their reason) for the record and are retried by the
next run. Requests submitted to the Batch API are kept as "pending" with their
batch id until a later run collects them.

Nothing secret is ever stored: rows hold the key hash, the response text, the
finish reason, token counts, a caller label and a redacted error reason.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmloop.io import stable_hash

OK, FAILED, PENDING = "ok", "failed", "pending"
DEFAULT_JOURNAL_DIR = Path(".mmloop/journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    label TEXT,
    model TEXT,
    content TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    batch_id TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status);
CREATE INDEX IF NOT EXISTS requests_batch ON requests(batch_id);
"""


def request_key(model: str, messages: list[dict[str, Any]], generation: dict[str, Any],
                prompt_sha256: str | None = None) -> str:
    """The journal key: a hash of (model, messages, generation params, prompt sha).

    `generation` holds only what changes the reply (temperature, max_tokens,
    response_format, seed, ...); never transport settings or credentials.
    """
    return stable_hash(model, messages, generation, prompt_sha256, length=32)


@dataclass(frozen=True)
class Entry:
    key: str
    status: str
    label: str | None
    model: str | None
    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    error: str | None
    batch_id: str | None

    @property
    def is_hit(self) -> bool:
        """Served instead of sending the request again: a successful, non-empty reply."""
        return self.status == OK and bool(self.content and self.content.strip())


class Journal:
    """A SQLite request journal. Open one per process; safe to read from others meanwhile."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, each statement its own durable transaction.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._use_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _use_wal(self) -> None:
        """Switch a new file to WAL. Two connections switching at once (a writer starting while a
        monitor opens the file) would deadlock, so SQLite refuses one with "database is locked"
        at once, without waiting out the busy timeout: that one tries again."""
        deadline = time.monotonic() + 30
        while self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM requests WHERE key = ?", (key,)).fetchone()
        return Entry(*row) if row else None

    def hit(self, key: str) -> Entry | None:
        """The stored reply if it may be served; None for missing, failed, pending or empty."""
        entry = self.get(key)
        return entry if entry is not None and entry.is_hit else None

    def entries(self, status: str | None = None) -> list[Entry]:
        if status is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM requests ORDER BY key").fetchall()
        else:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM requests WHERE status = ? ORDER BY key",
                                    (status,)).fetchall()
        return [Entry(*row) for row in rows]

    def pending_batches(self) -> dict[str, list[str]]:
        """batch id -> keys still waiting on it."""
        batches: dict[str, list[str]] = {}
        for key, batch_id in self._db.execute(
                "SELECT key, batch_id FROM requests WHERE status = ? ORDER BY key", (PENDING,)):
            batches.setdefault(batch_id, []).append(key)
        return batches

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())

    # --- writes --------------------------------------------------------------------------------
    def record_ok(self, key: str, *, content: str, finish_reason: str | None, model: str | None = None,
                  label: str | None = None, prompt_tokens: int = 0, completion_tokens: int = 0,
                  attempts: int = 1) -> None:
        self._upsert(key, OK, label=label, model=model, content=content, finish_reason=finish_reason,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, attempts=attempts)

    def record_failed(self, key: str, *, error: str, model: str | None = None, label: str | None = None,
                      content: str | None = None, finish_reason: str | None = None, prompt_tokens: int = 0,
                      completion_tokens: int = 0, attempts: int = 1) -> None:
        # A failure never overwrites a success: a late duplicate error must not erase paid work.
        existing = self.get(key)
        if existing is not None and existing.is_hit:
            return
        self._upsert(key, FAILED, label=label, model=model, content=content, finish_reason=finish_reason,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, attempts=attempts,
                     error=error)

    def record_pending(self, keys: Iterable[tuple[str, str | None]], *, batch_id: str, model: str | None) -> None:
        """Mark (key, label) pairs as submitted in `batch_id`, in one transaction."""
        now = time.time()
        with _transaction(self._db):
            self._db.executemany(
                "INSERT INTO requests (key, status, label, model, batch_id, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status=excluded.status, batch_id=excluded.batch_id, "
                "updated_at=excluded.updated_at WHERE requests.status != 'ok'",
                [(key, PENDING, label, model, batch_id, now) for key, label in keys])

    def _upsert(self, key: str, status: str, **fields: Any) -> None:
        fields = {"status": status, "updated_at": time.time(), "error": None, **fields}
        names = ", ".join(["key", *fields])
        marks = ", ".join("?" * (len(fields) + 1))
        updates = ", ".join(f"{name}=excluded.{name}" for name in fields)
        self._db.execute(f"INSERT INTO requests ({names}) VALUES ({marks}) "
                         f"ON CONFLICT(key) DO UPDATE SET {updates}", (key, *fields.values()))


_COLUMNS = ("key, status, label, model, content, finish_reason, prompt_tokens, completion_tokens, "
            "attempts, error, batch_id")


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def default_path(name: str = "openai") -> Path:
    return DEFAULT_JOURNAL_DIR / f"{name}.sqlite"


def dump_jsonl(journal: Journal) -> str:
    """The journal as JSON lines (for inspection and tests)."""
    return "".join(json.dumps(entry.__dict__, sort_keys=True) + "\n" for entry in journal.entries())

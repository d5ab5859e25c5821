"""What every teacher is: `prompt(query)` and `parse(request, reply)`, with the sending behind it.

The shape follows Curator's `LLM` class: a teacher says what it asks about one query
(`prompt`) and how a reply becomes sample rows (`parse`); `send` gets the replies, and is
where a teacher keeps its journal, concurrency, retries and circuit breaker (the openai
teacher) or computes them in-process (the annotations teacher). `run` drives the three and
counts what happened to each query under one name per outcome:

- generated: the reply gave at least one new sample;
- skipped: the teacher declined (the annotations cannot ask that family on the image; an
  LLM replied "Skip");
- parse_failed: a reply came but held no valid item;
- request_failed: no reply came (after retries), recorded so the IPO review can show it;
- duplicate: the query asked exactly what an earlier one asked, or its sample already exists.

A teacher that can no longer be reached raises (llm.CircuitBreakerOpen) instead of
reporting every query as request_failed, so the stage publishes nothing.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmloop.schema import PARSE_FAILED, REQUEST_FAILED, SKIPPED, TEACHER_REASONS

GENERATED, DUPLICATE = "generated", "duplicate"
OUTCOMES = (GENERATED, SKIPPED, PARSE_FAILED, REQUEST_FAILED, DUPLICATE)
# The outcomes that still leave a row in generated.parquet (kept=False, reject_reason = the outcome).
REJECTED_OUTCOMES = TEACHER_REASONS


@dataclass(frozen=True)
class Parsed:
    """What one reply came to: its outcome and the rows it made (rejected rows included)."""

    outcome: str
    rows: list[dict[str, Any]] = field(default_factory=list)


class Teacher(abc.ABC):
    """A source of new samples for queries. Subclasses define prompt, send and parse."""

    backend: ClassVar[str]

    @abc.abstractmethod
    def prompt(self, query: Mapping[str, Any]) -> Any:
        """The request for one query; it keeps the query as `.query`, and `.key` names identical
        requests (None when no two requests can be the same)."""

    @abc.abstractmethod
    def send(self, requests: Sequence[Any]) -> list[Any]:
        """One reply per request, in order."""

    @abc.abstractmethod
    def parse(self, request: Any, reply: Any) -> Parsed:
        """The reply to `request` as sample rows and an outcome."""

    def summary(self) -> dict[str, Any]:
        """Teacher-specific metrics (model, usage, cost...) for the stage's metrics file."""
        return {}

    def run(self, queries: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(rows, metrics): rows in query order, each sample_id once; metrics count every outcome."""
        requests = [self.prompt(query) for query in queries]
        replies = self.send(requests)
        rows: list[dict[str, Any]] = []
        seen_rows: set[str] = set()
        seen_requests: set[str] = set()
        outcomes: Counter = Counter()
        per_category: dict[str, Counter] = {}
        for request, reply in zip(requests, replies, strict=True):
            if request.key is not None and request.key in seen_requests:
                outcome = DUPLICATE  # sent once; only the first query asking it turns the reply into rows
            else:
                if request.key is not None:
                    seen_requests.add(request.key)
                parsed = self.parse(request, reply)
                new = [row for row in parsed.rows if row["sample_id"] not in seen_rows]
                seen_rows.update(row["sample_id"] for row in new)
                rows.extend(new)
                outcome = DUPLICATE if parsed.outcome == GENERATED and not new else parsed.outcome
            outcomes[outcome] += 1
            per_category.setdefault(request.query["category"], Counter())[outcome] += 1
        return rows, self.metrics(len(queries), rows, outcomes, per_category)

    def metrics(self, queries: int, rows: Sequence[Mapping[str, Any]], outcomes: Counter,
                per_category: Mapping[str, Counter]) -> dict[str, Any]:
        share = 1 / queries if queries else 0.0
        return {
            "backend": self.backend, "queries": queries,
            "samples": sum(1 for row in rows if row["kept"] is None),  # what goes on to elimination
            "outcomes": {name: outcomes[name] for name in OUTCOMES},
            "rates": {name: outcomes[name] * share for name in OUTCOMES},
            "categories": {category: {"queries": sum(counts.values()), **{name: counts[name] for name in OUTCOMES}}
                           for category, counts in sorted(per_category.items())},
            **self.summary(),
        }

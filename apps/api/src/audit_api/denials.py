"""Denied requests, bounded per source, and none of them unrecorded.

One anonymous client made 429 denied rows a second (~94 GB a day at maximum field sizes). Per
source address and window (``AUDIT_DENIED_WINDOW_SECONDS``):

- the first ``AUDIT_DENIED_EVENTS_PER_SOURCE`` denied requests are recorded one event each, as
  before (401 once JetStream acknowledged the event);
- the next ones are *folded*: answered 401 at once and counted; at the end of the window one
  event stands for them all, ``metadata.denied_requests`` saying how many (and ``statuses``
  how they were answered);
- beyond ``AUDIT_DENIED_REQUESTS_PER_SOURCE`` the answer is 429 with ``Retry-After``, counted in
  the same folded event.

So the sum of ``denied_requests`` (1 for an unfolded event) over the stored denied events equals
the 401 and 429 answers given. A folded event that cannot be published now (broker away) is kept
and retried; the lifespan's end publishes what is left. An ungraceful crash (SIGKILL, OOM), or a
shutdown while the broker is unreachable, loses the counts not yet published (at most the current
window's, plus any the broker refused meanwhile; logged): a folded 401 claims no audit event id,
unlike a 200.
Budgets count per process: with W uvicorn workers and R replicas a source may get W x R times
the budget. The source is the TCP peer, or ``X-Forwarded-For`` from a trusted proxy only.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from audit_events import AuditEvent, uuid7

log = logging.getLogger("audit.api.denials")
MAX_SOURCES = 10_000  # tracked per window; beyond it new sources share one budget ("*")
Verdict = Literal["record", "fold", "refuse"]


@dataclass
class Fold:
    """The denied requests of one source that no event of their own records yet."""

    first: AuditEvent  # the first one's event: what, which resource, from where
    statuses: Counter[int] = field(default_factory=Counter)
    last_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def event(self, window_seconds: float) -> AuditEvent:
        metadata = self.first.metadata | {
            "denied_requests": sum(self.statuses.values()),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "folded_until": self.last_at.isoformat(),
            "window_seconds": window_seconds,
        }
        return self.first.model_copy(update={"id": uuid7(), "metadata": metadata})


class Denials:
    """Per-source budgets of denied requests and the folds beyond them (see the module)."""

    def __init__(self, window_seconds: float, events: int, requests: int) -> None:
        self.window, self.events, self.requests = window_seconds, events, requests
        self._window_started = time.monotonic()
        self._seen: Counter[str] = Counter()
        self._folds: dict[str, Fold] = {}

    def verdict(self, source: str | None) -> Verdict:
        """What to do with one more denied request from ``source``."""
        now = time.monotonic()
        if now - self._window_started >= self.window:
            self._window_started, self._seen = now, Counter()
        key = self._key(source)
        self._seen[key] += 1
        if self._seen[key] <= self.events:
            return "record"
        return "fold" if self._seen[key] <= self.requests else "refuse"

    def _key(self, source: str | None) -> str:
        key = source or "-"
        return key if key in self._seen or len(self._seen) < MAX_SOURCES else "*"

    def fold(self, source: str | None, event: AuditEvent, status: int) -> None:
        """Count a denied request answered ``status`` without an event of its own."""
        fold = self._folds.setdefault(self._key(source), Fold(event))
        fold.statuses[status] += 1
        fold.last_at = datetime.now(UTC)

    async def flush(self, publish: Callable[[AuditEvent], Awaitable[None]]) -> None:
        """Publish one event per folded source; keep (and merge) what could not be published."""
        folds, self._folds = self._folds, {}
        for source, fold in folds.items():
            try:
                await publish(fold.event(self.window))
            except Exception as exc:
                log.warning("folded denied events of %s not recorded yet (%s)", source, exc)
                kept = self._folds.setdefault(source, Fold(fold.first))
                kept.statuses.update(fold.statuses)
                kept.last_at = max(kept.last_at, fold.last_at)

    async def flush_every_window(self, publish: Callable[[AuditEvent], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.window)
            await self.flush(publish)

"""Folding: repeated records of one kind, bounded per key and window, and none of them lost.

Two kinds of requests would flood the log with one record each: denied requests (the API's 401s,
the query service's refused reads) and a client polling the query service's feed. Per key (a
source address, or a reader's feed session) and window:

- the first ``events`` requests get a record of their own (published before they are answered);
- the next ones are *folded*: answered at once and counted; when the window ends, one record
  stands for them all — the first folded request's event, its ``metadata`` holding the summed
  counts (e.g. ``denied_requests``, ``statuses``; ``polls``, ``rows``), ``folded_until`` and
  ``window_seconds``;
- beyond ``requests`` (if set) the verdict is ``refuse`` (the caller answers 429), and the
  refusal is counted in the same folded record.

So the counts over the stored records add up to the requests answered. A folded record that
cannot be published (broker away) is kept, merged with later counts and retried each window;
:meth:`Folding.flush` at shutdown publishes what is left. What an ungraceful crash loses is the
counts not yet published: a folded request claims no audit event id of its own.

State is bounded: a window forgets the keys of the one before (lookups are one dict access),
and at most ``max_keys`` keys are tracked per window; past that, new keys share one (``*``) —
a global cap — or, with ``overflow="record"`` (keys that name a reader, who must not be folded
into another's record), get records of their own.
"""

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from audit_events.ids import uuid7
from audit_events.model import AuditEvent

log = logging.getLogger("audit.folding")
Verdict = Literal["record", "fold", "refuse"]
Counts = dict[str, Any]  # name -> int, or name -> {name: int} (e.g. statuses)
SHARED = "*"


def add_counts(total: Counts, more: Counts) -> None:
    """``total += more``, name by name (one level of nesting)."""
    for name, n in more.items():
        if isinstance(n, dict):
            inner = total.setdefault(name, {})
            for k, v in n.items():
                inner[k] = inner.get(k, 0) + v
        else:
            total[name] = total.get(name, 0) + n


@dataclass
class Fold:
    """The folded requests of one key that no record of their own stands for yet."""

    first: AuditEvent  # what, on which resource, from where (the first folded request)
    counts: Counts = field(default_factory=dict)
    last_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def event(self, window_seconds: float) -> AuditEvent:
        metadata = self.first.metadata | self.counts
        metadata |= {"folded_until": self.last_at.isoformat(), "window_seconds": window_seconds}
        return self.first.model_copy(update={"id": uuid7(), "metadata": metadata})


Publish = Callable[[AuditEvent], Awaitable[None]]


def source_key(address: str | None, ipv6_prefix: int = 64) -> str | None:
    """Whom a denied request is charged to: its IPv4 address, or the IPv6 network of
    ``ipv6_prefix`` bits around its address — one party usually holds a whole /64, and would
    otherwise get a fresh budget from each of its 2**64 addresses."""
    if address is None or ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/{ipv6_prefix}", strict=False))
    except ValueError:
        return address


class Folding:
    """Budgets per key and window, and the folds beyond them (see the module)."""

    def __init__(
        self,
        window_seconds: float,
        events: int,
        requests: int | None = None,
        *,
        max_keys: int = 10_000,
        overflow: Literal["share", "record"] = "share",
    ) -> None:
        self.window, self.events, self.requests = window_seconds, events, requests
        self.max_keys, self.overflow = max_keys, overflow
        self._window_started = time.monotonic()
        self._seen: dict[Hashable, int] = {}
        self._folds: dict[Hashable, Fold] = {}

    def verdict(self, key: Hashable) -> Verdict:
        """What to do with one more request of ``key``."""
        now = time.monotonic()
        if now - self._window_started >= self.window:
            self._window_started, self._seen = now, {}
        key = self._key(key)
        if key is None:
            return "record"
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if seen <= self.events:
            return "record"
        return "fold" if self.requests is None or seen <= self.requests else "refuse"

    def _key(self, key: Hashable) -> Hashable | None:
        if key in self._seen or len(self._seen) < self.max_keys:
            return key
        return SHARED if self.overflow == "share" else None

    def fold(self, key: Hashable, event: AuditEvent, **counts: Any) -> None:
        """Count a request that has no record of its own (``event`` is what it would have
        been); ``counts`` add to the key's folded record."""
        shared = self._key(key)
        fold = self._folds.setdefault(key if shared is None else shared, Fold(event))
        add_counts(fold.counts, counts)
        fold.last_at = datetime.now(UTC)

    @property
    def owed(self) -> int:
        """Keys whose folded record is not published yet."""
        return len(self._folds)

    async def flush(self, publish: Publish) -> None:
        """Publish one record per folded key; keep (and merge) what could not be published."""
        folds, self._folds = self._folds, {}
        for key, fold in folds.items():
            try:
                await publish(fold.event(self.window))
            except Exception as exc:
                log.warning("folded records of %s not published yet (%s)", key, exc)
                kept = self._folds.setdefault(key, Fold(fold.first))
                add_counts(kept.counts, fold.counts)
                kept.last_at = max(kept.last_at, fold.last_at)

    async def flush_every_window(self, publish: Publish) -> None:
        while True:
            await asyncio.sleep(self.window)
            await self.flush(publish)

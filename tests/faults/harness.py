"""The fault rig: servers that can be killed, a load generator, and the exactly-once check."""

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from audit_events.auth import issue_token
from tests.env import JWT_SECRET
from tests.helpers import assert_intact, stored_ids
from tests.processes import Service

AUTH = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'fault-tester')}"}


class Load:
    """PATCH requests at a fixed concurrency until ``total`` were sent or :meth:`stop`.

    Records every outcome: the audit ids of 200s, counts per status, and requests that got no
    answer within ``timeout`` (a hang: the API must answer 503 well before that)."""

    def __init__(self, url: str, concurrency: int = 8, total: int | None = None) -> None:
        self.url, self.concurrency, self.total = url, concurrency, total
        self.timeout = 10.0  # the API's publish timeout is 2 s
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.hung = 0
        self.sent = 0
        self._log: list[int] = []  # statuses in answer order
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> "Load":
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        await self.done()

    async def done(self) -> None:
        assert self._task is not None
        await self._task

    def since(self, mark: int) -> Counter[int]:
        """Statuses of requests answered after ``mark`` answers had been counted."""
        return Counter(self._log[mark:])

    @property
    def answered(self) -> int:
        return len(self._log)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=self.timeout) as c:
            await asyncio.gather(*(self._worker(c) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set() and (self.total is None or self.sent < self.total):
            i = self.sent
            self.sent += 1
            try:
                r = await client.patch(f"/accounts/acc-{i}", json={"n": i}, headers=AUTH)
            except httpx.TimeoutException:
                self.hung += 1
                continue
            except httpx.TransportError:
                self.statuses[0] += 1
                self._log.append(0)
                await asyncio.sleep(0.05)
                continue
            self.statuses[r.status_code] += 1
            self._log.append(r.status_code)
            if r.status_code == 200:
                self.acknowledged.append(r.json()["audit_event_id"])
            elif r.status_code == 503:
                await asyncio.sleep(0.05)  # a polite client honours Retry-After, roughly


@dataclass
class Summary:
    scenario: str
    sent: int
    acknowledged: int
    stored: int
    duplicates: int
    dead_lettered: int
    recovery_s: float
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"{self.scenario:<28} sent={self.sent:<5} acknowledged={self.acknowledged:<5} "
            f"stored={self.stored:<5} duplicates={self.duplicates} "
            f"dead_lettered={self.dead_lettered} recovery_s={self.recovery_s:.1f} {extra}"
        ).rstrip()


RESULTS: list[Summary] = []


async def wait_stored(db: str, ids: list[str], timeout: float = 120) -> float:
    """Wait until every id in ``ids`` is a row; returns how long that took."""
    started = time.monotonic()
    wanted = set(ids)
    while True:
        missing = wanted - set(await stored_ids(db))
        if not missing:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{len(missing)} acknowledged events never stored")
        await asyncio.sleep(0.2)


async def verify(
    scenario: str,
    db: str,
    load: Load | None,
    *,
    sent: int = 0,
    acknowledged: list[str] | None = None,
    dead_lettered: int = 0,
    recovery_s: float = 0.0,
    **notes: Any,
) -> Summary:
    """Every acknowledged event is stored exactly once; nothing else claims to be one."""
    ids = acknowledged if acknowledged is not None else (load.acknowledged if load else [])
    await wait_stored(db, ids)
    rows = await stored_ids(db)
    counts = Counter(rows)
    duplicates = sum(n - 1 for n in counts.values())
    stored = sum(1 for i in set(ids) if i in counts)
    assert duplicates == 0
    assert len(set(ids)) == len(ids), "the API handed out an id twice"
    assert stored == len(ids)
    if load is not None:
        assert load.statuses[500] == 0, load.statuses
        assert load.hung == 0, "a request hung past the client timeout"
        # Rows nobody got a 200 for can only come from requests answered 503 after JetStream
        # stored the event but before its ack arrived: never more than those.
        assert len(rows) - stored <= load.statuses[503]
    intact = await assert_intact(db)  # and audit-verify finds every row sealed, nothing wrong
    notes.setdefault("seals", intact.seals)
    summary = Summary(
        scenario,
        load.sent if load else sent,
        len(ids),
        stored,
        duplicates,
        dead_lettered,
        recovery_s,
        notes,
    )
    print("\n" + summary.line())
    RESULTS.append(summary)
    return summary


def health(service: Service) -> dict[str, Any]:
    """The consumer's probe body (counters included), or {} if it does not answer."""
    _, body = service.get("/healthz")
    return dict(json.loads(body)) if body else {}

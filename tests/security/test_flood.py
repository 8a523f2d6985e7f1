"""An anonymous flood against the real pipeline, through a graceful restart of the API: rows stay
few, and the sum of denied_requests over the stored denied events equals the 401 and 429 answers
given (an ungraceful crash could lose the counts of the current window: audit_events/folding.py)."""

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_consumer.settings import Settings
from tests.env import service_env
from tests.helpers import wait_for
from tests.processes import Service, api, consumer

BUDGET = {
    "AUDIT_DENIED_WINDOW_SECONDS": "2",
    "AUDIT_DENIED_EVENTS_PER_SOURCE": "5",
    "AUDIT_DENIED_REQUESTS_PER_SOURCE": "60",
}
SUM = (
    "SELECT count(*), coalesce(sum(coalesce((metadata->>'denied_requests')::int, 1)), 0)"
    " FROM audit_events WHERE outcome = 'denied'"
)


@pytest.fixture
def writer(streams: Settings, tmp_path: Path) -> Iterator[Service]:
    service = consumer(service_env(streams), tmp_path, 1).start()
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


async def flood(url: str, n: int) -> Counter[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers = await asyncio.gather(*(client.get(f"/accounts/f{i}") for i in range(n)))
    return Counter(r.status_code for r in answers)


async def test_a_flood_is_folded_bounded_and_fully_counted_across_a_restart(
    streams: Settings, writer: Service, db: Any, tmp_path: Path
) -> None:
    answers: Counter[int] = Counter()
    for run in range(2):
        server = api(service_env(streams, **BUDGET), tmp_path / f"run{run}")
        (tmp_path / f"run{run}").mkdir()
        server.start()
        try:
            server.wait_ready()
            answers += await flood(f"http://127.0.0.1:{server.port}", 150)
        finally:
            server.signal(signal.SIGTERM)  # graceful: its last window's folds are published
            # (uvicorn re-raises the signal once it has shut down: exit status -SIGTERM)
            assert await asyncio.to_thread(server.wait, 30) in (0, -signal.SIGTERM)
            assert "Application shutdown complete" in server.logs()
    assert set(answers) == {401, 429}
    assert answers[429] > 0

    async def counted() -> bool:
        _rows, requests = await (await db.execute(SUM)).fetchone()
        return bool(requests == sum(answers.values()))

    await wait_for(counted, timeout=60)
    rows, _ = await (await db.execute(SUM)).fetchone()
    assert rows < 40  # not 300: at most 5 + a folded one per source and window, per run

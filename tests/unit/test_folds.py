"""Folding (``audit_events.folding``), the one design both services use for repeated records:
the counts add up, a refused request is counted too, a window forgets the keys of the one
before, and past the key cap new keys share one record (or get their own)."""

from datetime import UTC, datetime

import pytest

from audit_events import AuditEvent, uuid7
from audit_events.folding import Folding


def event(**metadata: object) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "id": uuid7(),
            "occurred_at": datetime.now(UTC),
            "actor_type": "user",
            "actor_id": "u1",
            "action": "audit.feed",
            "resource_type": "audit_log",
            "resource_id": "audit_events",
            "outcome": "success",
            "metadata": metadata,
        }
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("audit_events.folding.time.monotonic", lambda: now[0])
    return now


async def test_budget_then_folded_then_refused_and_every_request_counted(
    clock: list[float],
) -> None:
    folding = Folding(60, events=2, requests=4)
    verdicts = [folding.verdict("src") for _ in range(6)]
    assert verdicts == ["record", "record", "fold", "fold", "refuse", "refuse"]
    for status in (401, 401, 429, 429):
        folding.fold("src", event(path="/x"), denied_requests=1, statuses={str(status): 1})
    published: list[AuditEvent] = []

    async def publish(e: AuditEvent) -> None:
        published.append(e)

    await folding.flush(publish)
    [folded] = published
    assert folded.metadata["denied_requests"] == 4
    assert folded.metadata["statuses"] == {"401": 2, "429": 2}
    assert folded.metadata["path"] == "/x"
    assert folded.metadata["window_seconds"] == 60
    clock[0] += 61
    assert folding.verdict("src") == "record"  # a new window, a new budget


async def test_unpublished_folds_are_kept_and_merged(clock: list[float]) -> None:
    folding = Folding(60, events=0)
    folding.verdict("s")
    folding.fold("s", event(), polls=1, rows=5)

    async def down(_: AuditEvent) -> None:
        raise RuntimeError("broker away")

    await folding.flush(down)
    folding.fold("s", event(), polls=1, rows=2)
    published: list[AuditEvent] = []

    async def up(e: AuditEvent) -> None:
        published.append(e)

    await folding.flush(up)
    assert [(e.metadata["polls"], e.metadata["rows"]) for e in published] == [(2, 7)]
    assert folding.owed == 0


def test_state_is_bounded_and_overflow_shares_or_records(clock: list[float]) -> None:
    shared = Folding(60, events=1, max_keys=3)
    own = Folding(60, events=1, max_keys=3, overflow="record")
    for key in ("a", "b", "c"):
        shared.verdict(key), own.verdict(key)
    assert shared.verdict("d") == "record"  # "d" and "e" share the "*" key: one budget
    assert shared.verdict("e") == "fold"
    assert own.verdict("d") == own.verdict("e") == "record"  # never folded into another's
    clock[0] += 61
    assert shared.verdict("d") == "record"  # the window forgot the keys of the last one
    assert len(shared._seen) == 1

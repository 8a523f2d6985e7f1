"""Denied requests are bounded per source and every one is on the record: the sum of
denied_requests over the denied events equals the 401 and 429 answers."""

from collections import Counter

import httpx

from audit_api.main import create_app
from audit_api.settings import Settings
from tests.env import JWT_SECRET
from tests.fakes import FakePublisher


def settings() -> Settings:
    """3 events of their own per source and window, 429 after 10 denied requests."""
    return Settings(
        AUDIT_JWT_SECRET=JWT_SECRET,
        AUDIT_DENIED_EVENTS_PER_SOURCE=3,
        AUDIT_DENIED_REQUESTS_PER_SOURCE=10,
    )


def recorded_requests(publisher: FakePublisher) -> int:
    denied = [e for e in publisher.events if e.outcome == "denied"]
    return sum(int(str(e.metadata.get("denied_requests", 1))) for e in denied)


async def flood(app: object, source: str, n: int) -> Counter[int]:
    transport = httpx.ASGITransport(app=app, client=(source, 1234))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return Counter([(await client.get(f"/accounts/a{i}")).status_code for i in range(n)])


async def test_beyond_the_budget_denials_are_folded_then_refused_and_all_counted() -> None:
    publisher = FakePublisher()
    app = create_app(settings(), publisher)
    answers = await flood(app, "203.0.113.7", 15)
    assert answers == {401: 10, 429: 5}
    assert len(publisher.events) == 3  # one event each, within the budget
    responses = app.openapi()["paths"]["/accounts/{account_id}"]["get"]["responses"]
    assert "429" in responses  # documented, and its metric series exists from the start

    await app.state.denials.flush(publisher.publish)  # the window's end (or shutdown)
    (folded,) = publisher.events[3:]
    assert folded.metadata["denied_requests"] == 12
    assert folded.metadata["statuses"] == {"401": 7, "429": 5}
    assert str(folded.source_ip) == "203.0.113.7"
    assert recorded_requests(publisher) == sum(answers.values())


async def test_other_sources_keep_their_own_budget() -> None:
    publisher = FakePublisher()
    app = create_app(settings(), publisher)
    await flood(app, "203.0.113.7", 30)
    assert await flood(app, "198.51.100.1", 3) == {401: 3}
    assert [str(e.source_ip) for e in publisher.events].count("198.51.100.1") == 3


async def test_a_fold_that_cannot_be_published_is_kept_not_lost() -> None:
    publisher = FakePublisher()
    app = create_app(settings(), publisher)
    answers = await flood(app, "203.0.113.7", 8)
    publisher.fail = True
    await app.state.denials.flush(publisher.publish)
    answers += await flood(app, "203.0.113.7", 2)  # still within the same window
    publisher.fail = False
    await app.state.denials.flush(publisher.publish)
    assert recorded_requests(publisher) == sum(answers.values()) == 10

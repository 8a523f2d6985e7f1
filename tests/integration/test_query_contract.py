"""The query service's OpenAPI document is what generated clients trust: schemathesis generates
requests from it (a reader's token on most; none, or one without the scope, on some) against
the real service on real PostgreSQL and NATS, runs every check, and every response must be one
the document declares — status, media type, body — and never a 500."""

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from requests.structures import CaseInsensitiveDict
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from audit_consumer.settings import Settings as ConsumerSettings
from audit_events.auth import issue_token
from tests.env import JWT_SECRET, service_env
from tests.integration.reading import READ
from tests.processes import Service, query

SCOPELESS = f"Bearer {issue_token(JWT_SECRET, 'nobody')}"


@pytest.fixture
def service(streams: ConsumerSettings, db: Any, reader: str, tmp_path: Path) -> Iterator[Service]:
    server = query(service_env(streams), tmp_path, reader).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_every_generated_request_gets_a_documented_answer(service: Service) -> None:
    """Every check schemathesis has, on every operation. One exception, stated: a cursor is an
    opaque token this service hands out, so a schema-valid string that is no cursor of ours is
    rightly refused (422) — the positive-data check is skipped for cases that carry one."""
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{service.port}/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema raises here
        tested.append(operation.label)

        @hypothesis.given(operation.as_strategy())
        @hypothesis.settings(
            max_examples=40, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )  # fmt: skip
        def check(case: Case) -> None:  # type: ignore[type-arg]
            which = zlib.crc32(repr((case.path, case.query)).encode()) % 8
            if which:  # most with a reader's token; one in eight without, one without the scope
                auth = SCOPELESS if which == 1 else READ["Authorization"]
                case.headers = CaseInsensitiveDict(
                    {**dict(case.headers or {}), "Authorization": auth}
                )
            opaque = bool({"cursor", "after"} & set(case.query or {}))
            case.call_and_validate(excluded_checks=[positive_data_acceptance] if opaque else [])

        check()
    assert len(tested) == 4, tested  # the listing, one event, the feed, the export

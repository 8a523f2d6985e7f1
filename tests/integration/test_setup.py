"""``audit-setup``: migrations up and down, provisioning idempotent and repairing drift."""

import os
import subprocess

import psycopg
from alembic import command
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy

from audit_consumer.database import alembic_config, migrate
from audit_consumer.jetstream import (
    consumer_config,
    ensure_durable,
    ensure_stream,
    provision,
    stream_configs,
)
from audit_consumer.settings import Settings
from audit_events.broker import SETUP
from tests.env import BIN, ROOT, identity_env, service_env


async def test_migration_creates_table_and_indexes_and_downgrades(migrated: str) -> None:
    settings = Settings(DATABASE_URL=migrated, AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations"))
    with psycopg.connect(migrated) as conn:
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_events'"
            )
        }
    assert {"audit_events_pkey", "audit_events_resource_idx", "audit_events_actor_idx"} <= indexes

    command.downgrade(alembic_config(settings), "base")
    with psycopg.connect(migrated) as conn:
        assert conn.execute("SELECT to_regclass('audit_events')").fetchone() == (None,)
    await migrate(settings)
    await migrate(settings)  # again: nothing to do
    with psycopg.connect(migrated) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0007",)


def test_concurrent_setups_queue_instead_of_racing(migrated: str) -> None:
    """Two setups at once (separate processes, as in a cluster): one migrates, one waits."""
    env = {**os.environ, "DATABASE_URL": migrated, "AUDIT_MIGRATIONS_DIR": str(ROOT / "migrations")}
    command.downgrade(
        alembic_config(
            Settings(DATABASE_URL=migrated, AUDIT_MIGRATIONS_DIR=env["AUDIT_MIGRATIONS_DIR"])
        ),
        "base",
    )
    runs = [
        subprocess.Popen([BIN / "audit-setup", "migrate"], env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert [p.wait(120) for p in runs] == [0, 0], [p.stderr.read() for p in runs if p.stderr]
    with psycopg.connect(migrated) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0007",)


async def test_provision_is_idempotent_and_repairs_drift(streams: Settings, nc: NATS) -> None:
    js = nc.jetstream()
    audit, dlq = stream_configs(streams)
    assert await ensure_stream(js, audit) == "unchanged"
    assert await ensure_stream(js, dlq) == "unchanged"
    durable = consumer_config(streams)
    assert await ensure_durable(js, streams.names.stream, durable) == "unchanged"

    drifted = (await js.stream_info(streams.names.stream)).config
    drifted.duplicate_window = 130.0
    drifted.max_msg_size = 1024
    await js.update_stream(drifted)
    assert await ensure_stream(js, audit) == "updated (max_msg_size, duplicate_window)"

    drifted_durable = (await js.consumer_info(streams.names.stream, durable.name or "")).config
    drifted_durable.max_ack_pending = 7
    await js.add_consumer(streams.names.stream, drifted_durable)
    assert await ensure_durable(js, streams.names.stream, durable) == "updated (max_ack_pending)"

    await provision(streams)  # and again through the public entry point
    info = await js.stream_info(streams.names.stream)
    assert (info.config.retention, info.config.deny_purge) == (RetentionPolicy.LIMITS, False)
    assert info.config.duplicate_window == streams.provision.duplicate_window_seconds
    durable = await js.consumer_info(streams.names.stream, streams.names.durable)
    assert durable.config.max_deliver == -1
    assert durable.config.filter_subject == streams.names.events_subjects
    assert (await js.stream_info(streams.names.dlq_stream)).config.subjects == [
        streams.names.dlq_subjects
    ]


def test_cli_runs_both_steps_twice(streams: Settings, migrated: str) -> None:
    env = service_env(streams, AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations")) | identity_env(SETUP)
    for _ in range(2):
        done = subprocess.run([BIN / "audit-setup"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    # The second run changed nothing, and says so for each of the three.
    assert "stream AUDIT: unchanged" in done.stderr
    assert "stream AUDIT_DLQ: unchanged" in done.stderr
    assert "durable audit-writer on AUDIT: unchanged" in done.stderr
    assert "updated" not in done.stderr


def test_cli_fails_clearly_when_nats_is_unreachable(streams: Settings) -> None:
    env = service_env(streams, NATS_URL="nats://127.0.0.1:1", AUDIT_SETUP_WAIT_SECONDS="0")
    done = subprocess.run(
        [BIN / "audit-setup", "provision"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "setup failed" in done.stderr

"""Alembic environment: online migrations only, against ``DATABASE_URL`` via psycopg 3.

The URL comes from the alembic config (set by ``audit-setup``) or the environment. libpq, not
SQLAlchemy, reads it (SQLAlchemy is handed the connection): so every URL the apps accept works
here too, including the multi-host form that follows a failover
(``postgresql://u:p@db1:5432,db2:5432/audit?target_session_attrs=read-write``), which
SQLAlchemy's own URL parser refuses.
"""

import contextlib
import os
import time
from collections.abc import Iterator
from functools import partial

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
    engine = create_engine(
        "postgresql+psycopg://", creator=partial(psycopg.connect, url), poolclass=pool.NullPool
    )
    with _one_at_a_time(url), engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


@contextlib.contextmanager
def _one_at_a_time(url: str) -> Iterator[None]:
    """Two setups at once (a Job retry beside a manual run, two compose stacks on one database)
    queue here; the second then finds nothing left to do. A session lock on a connection of its
    own, taken by polling: a migration's ``CREATE INDEX CONCURRENTLY`` commits midway (a
    transaction lock would be gone) and waits for every snapshot (a blocked waiter's too)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute(
            "SELECT pg_try_advisory_lock(hashtext('audit-migrations'))"
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.5)
        yield


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()

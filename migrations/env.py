"""Alembic environment: online migrations only, against ``DATABASE_URL`` via psycopg 3.

The URL comes from the alembic config (set by ``audit-setup``) or the environment; a plain
``postgresql://`` URL is given the psycopg 3 driver so users never have to spell it.
"""

import os

from alembic import context
from sqlalchemy import create_engine, pool, text


def sqlalchemy_url(url: str) -> str:
    """``postgresql://…`` → ``postgresql+psycopg://…`` (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            # Two setups at once (a Job retry beside a manual run, two compose stacks on one
            # database) queue here; the second then finds nothing left to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('audit-migrations'))"))
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()

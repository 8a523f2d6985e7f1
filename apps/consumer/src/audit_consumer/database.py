"""The PostgreSQL side of ``audit-setup``: alembic migrations (which create the tables, the
``audit_writer`` and ``audit_reader`` roles and the append-only grants) and the logins of the
consumers and of ``audit-verify``."""

import asyncio
import logging
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from audit_consumer.retry import until_up
from audit_consumer.settings import Settings

log = logging.getLogger("audit.setup")


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
    conn = await until_up(
        "PostgreSQL",
        lambda: psycopg.AsyncConnection.connect(settings.database_url, connect_timeout=5),
        settings.setup_wait_seconds,
    )
    await conn.close()
    await asyncio.to_thread(command.upgrade, config, revision)
    log.info("database migrated to %s", revision)
    await ensure_logins(settings)


async def ensure_logins(settings: Settings) -> None:
    """Logins for the URLs given: ``AUDIT_WRITER_DATABASE_URL`` joins ``audit_writer`` (the
    consumers), ``AUDIT_READER_DATABASE_URL`` (``audit-verify``) and
    ``AUDIT_QUERY_DATABASE_URL`` (``audit-query``: a login of its own, so either can be
    revoked alone) join ``audit_reader`` (SELECT only). Roles are created by the migrations;
    each login is created or its password refreshed. A URL that is not given, or names the
    owner itself, is left alone."""
    for url, role in (
        (settings.writer_database_url, "audit_writer"),
        (settings.reader_database_url, "audit_reader"),
        (settings.query_database_url, "audit_reader"),
    ):
        if url:
            await ensure_login(settings.database_url, url, role)


async def ensure_login(owner_url: str, url: str, role: str) -> None:
    """Make the user of ``url`` a login that is a member of ``role``."""
    login = conninfo_to_dict(url)
    user, password = login.get("user"), login.get("password")
    if not user or user == conninfo_to_dict(owner_url).get("user"):
        return
    name = sql.Identifier(str(user))
    secret = sql.SQL(" PASSWORD {}").format(sql.Literal(str(password))) if password else sql.SQL("")
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
        verb = sql.SQL("ALTER" if await cur.fetchone() else "CREATE")
        await conn.execute(sql.SQL("{} ROLE {} LOGIN{}").format(verb, name, secret))
        await conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), name))
    log.info("login %s: member of %s", user, role)

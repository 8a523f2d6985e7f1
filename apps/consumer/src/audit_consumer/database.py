"""The PostgreSQL side of ``audit-setup``: alembic migrations (which create the table, the
``audit_writer`` role and the append-only grants) and the consumer's own writer login."""

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

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


class _FirstLine(logging.Filter):
    """alembic logs each revision with its whole docstring: keep its first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage().split("\n", 1)[0], None
        return True


logging.getLogger("alembic.runtime.migration").addFilter(_FirstLine())


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
    if revision == "head":  # partitions ahead by the policy of this installation (bounds.py)
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            bounds = settings.bounds()
            await bounds.extend(conn)
            log.info("partitions up to %s", bounds.newest)
    await ensure_logins(settings)


async def ensure_logins(settings: Settings) -> None:
    """Logins for the URLs given: ``AUDIT_WRITER_DATABASE_URL`` joins ``audit_writer`` (the
    consumers), ``AUDIT_READER_DATABASE_URL`` (``audit-verify``) and
    ``AUDIT_QUERY_DATABASE_URL`` (``audit-query``: a login of its own, so either can be
    revoked alone) join ``audit_reader`` (SELECT only). Roles are created by the migrations;
    each login is created or its password refreshed. A URL that is not given, or names the
    owner itself, is left alone."""
    for url, role, timeouts in (
        (settings.writer_database_url, "audit_writer", WRITER_TIMEOUTS),
        (settings.reader_database_url, "audit_reader", VERIFY_TIMEOUTS),
        (settings.query_database_url, "audit_reader", QUERY_TIMEOUTS),
    ):
        if url:
            await ensure_login(settings.database_url, url, role, timeouts)


# Per login, what a stuck or forgotten session may hold. Any open transaction with an id holds
# back sealing and the feed for everyone (the commit horizon is the server's); these end the
# project's own. The role's holder can SET them away: they guard against accidents, not it.
# ``transaction_timeout`` exists from PostgreSQL 17 on.
WRITER_TIMEOUTS = {  # a batch or a seal takes milliseconds; a seal after an outage, longer
    "idle_in_transaction_session_timeout": "60s",
    "statement_timeout": "300s",
    "transaction_timeout": "600s",
}
QUERY_TIMEOUTS = {  # the service sets a 5 s statement timeout; an export runs up to ~6 min
    "idle_in_transaction_session_timeout": "60s",
    "statement_timeout": "900s",
    "transaction_timeout": "900s",
}
VERIFY_TIMEOUTS = {  # its parent holds an exported snapshot idle while its workers read
    "idle_in_transaction_session_timeout": "6h",
    "statement_timeout": "6h",
    "transaction_timeout": "6h",
}


async def ensure_login(
    owner_url: str, url: str, role: str, timeouts: dict[str, str] | None = None
) -> None:
    """Make the user of ``url`` a login that is a member of ``role``, with ``timeouts`` (those
    this server knows) as the login's defaults."""
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
        version = int((await (await conn.execute("SHOW server_version_num")).fetchone())[0])  # type: ignore[index]
        for setting, value in (timeouts or {}).items():
            if setting == "transaction_timeout" and version < 170000:
                continue
            await conn.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    name, sql.Identifier(setting), sql.Literal(value)
                )
            )
    log.info("login %s: member of %s", user, role)

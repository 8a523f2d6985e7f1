"""Exports: the listing's filters as NDJSON or CSV, formatted by PostgreSQL and streamed by
``COPY … TO STDOUT`` as the scan produces them (nothing accumulates, memory stays flat). CSV
cells that would run as spreadsheet formulas are neutralised unless asked for raw."""

import time
from collections import Counter
from collections.abc import AsyncIterator

import orjson
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from audit_events.model import read_as, read_expr
from audit_query.store import ITEM_COLUMNS, NEWEST_FIRST, Filters
from audit_query.trust import SealTrust


class ExportGate:
    """How many exports run, overall and per reader."""

    def __init__(self, overall: int, per_reader: int) -> None:
        self.overall, self.per_reader = overall, per_reader
        self.running: Counter[str] = Counter()

    def enter(self, reader: str) -> bool:
        if self.running.total() >= self.overall or self.running[reader] >= self.per_reader:
            return False
        self.running[reader] += 1
        return True

    def leave(self, reader: str) -> None:
        self.running[reader] -= 1
        if self.running[reader] <= 0:
            del self.running[reader]


CHUNK_BYTES = 64 * 1024  # what is written to the client at a time
_CSV_COLUMNS = sql.SQL(", ").join(sql.SQL(read_as(c)) for c in ITEM_COLUMNS)
TEXT_COLUMNS = {
    "actor_type", "actor_id", "action", "resource_type", "resource_id", "outcome", "source_ip",
    "user_agent", "request_id", "trace_id", "signature",
}  # fmt: skip
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A CSV cell starting with one of these runs as a formula in a spreadsheet (OWASP, "CSV
Injection"): text that callers chose (a user agent, a request id, a token's subject, an account
id; some from unauthenticated requests) must not reach a compliance officer's spreadsheet live."""


def _neutralised(column: str) -> sql.Composable:
    """The column's cell with a leading ``'`` where it would start a formula, so a spreadsheet
    shows it as text (the value stays readable; the NDJSON export keeps it exact)."""
    value = sql.SQL(read_expr(column))
    starts = sql.SQL(", ").join(sql.Literal(c) for c in FORMULA_STARTS)
    return sql.SQL("CASE WHEN left({v}, 1) IN ({s}) THEN {q} || {v} ELSE {v} END AS {c}").format(
        v=value, s=starts, q=sql.Literal("'"), c=sql.Identifier(column)
    )


_SAFE_CSV_COLUMNS = sql.SQL(", ").join(
    _neutralised(c) if c in TEXT_COLUMNS else sql.SQL(read_as(c)) for c in ITEM_COLUMNS
)
_JSON_LINE = sql.SQL(", ").join(
    sql.SQL("{}, {}").format(sql.Literal(c), sql.SQL(read_expr(c))) for c in ITEM_COLUMNS
)
# One column of JSON text, emitted raw: CSV mode never escapes backslashes, and neither the
# delimiter nor the quote character (0x1f, 0x01) can occur in JSON text (json_build_object
# writes control characters as \u00XX), so PostgreSQL quotes nothing.
_RAW_LINES = "FORMAT csv, DELIMITER E'\\x1f', QUOTE E'\\x01'"


def export_statement(
    filters: Filters, format: str, sealed_upto: int, raw: bool = False
) -> sql.Composed:
    """The ``COPY`` an export runs (the bench runs it directly, to compare); CSV cells that
    would start a formula are neutralised unless ``raw``."""
    sealed = sql.SQL("tx_id < {}::text::xid8").format(sql.Literal(sealed_upto))
    clauses, _ = filters.where(inline=True)
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    if format == "csv":
        select = sql.SQL("SELECT {}, {} AS sealed FROM audit_events {} {}").format(
            _CSV_COLUMNS if raw else _SAFE_CSV_COLUMNS, sealed, where, NEWEST_FIRST
        )
        options = sql.SQL("FORMAT csv, HEADER")
    else:
        select = sql.SQL(
            "SELECT json_build_object({}, 'sealed', {}) FROM audit_events {} {}"
        ).format(_JSON_LINE, sealed, where, NEWEST_FIRST)
        options = sql.SQL(_RAW_LINES)
    return sql.SQL("COPY ({}) TO STDOUT ({})").format(select, options)


async def export(
    pool: AsyncConnectionPool,
    filters: Filters,
    format: str,
    seconds: float,
    trust: SealTrust,
    raw: bool = False,
) -> AsyncIterator[bytes]:
    """The matching rows, newest first, as NDJSON or CSV, formatted by PostgreSQL and streamed
    by ``COPY … TO STDOUT`` (nothing accumulates: rows leave as the scan produces them).
    Leaving the generator early — a disconnected client — ends the COPY and returns the
    connection; so does passing ``seconds``, after which an NDJSON export ends with an
    ``{"error": …}`` line (a client that stops reading is cut off by the route)."""
    deadline = time.monotonic() + seconds
    async with pool.connection() as conn:
        statement = export_statement(filters, format, await trust.sealed_upto(conn), raw)
        # The pool's statement timeout is for queries; a streamed export may take as long as
        # its own bound (plus a margin: the bound is checked between chunks, with a clean end).
        limit = f"{int((seconds + 30) * 1000)}ms"
        await conn.execute("SELECT set_config('statement_timeout', %s, true)", (limit,))
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            chunk, size = [], 0
            async for block in copy:
                chunk.append(bytes(block))
                size += len(block)
                if size < CHUNK_BYTES:
                    continue
                yield b"".join(chunk)
                chunk, size = [], 0
                if time.monotonic() > deadline:
                    if format == "ndjson":
                        yield orjson.dumps(
                            {"error": f"export cut off after {seconds:g} s: narrow it"},
                            option=orjson.OPT_APPEND_NEWLINE,
                        )
                    return
            yield b"".join(chunk)

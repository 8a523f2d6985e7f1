"""The queries: filtered pages in a stable order, one event, and the gap-free feed.

Pages are keyset-paginated on ``(occurred_at, id)``, newest first: the cursor is the last row
handed out, so a row is never shown twice or skipped because others arrived meanwhile (OFFSET
would shift). The feed is ordered by ``(tx_id, id)`` and only hands out rows below the commit
horizon (``audit_events/horizon.py``): a row whose transaction is still running, or one that
may still commit with a smaller ``tx_id``, is held back until nothing older can commit, so a
client following the feed from the start receives every row exactly once, in a fixed order,
however the consumers' commits interleave. The price is a delay: a row appears once every
transaction older than its own has ended (normally milliseconds; as long as the oldest
running transaction lasts).
"""

import base64
import binascii
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_events.authorship import READS
from audit_events.horizon import HORIZON
from audit_events.model import read_as
from audit_query.trust import SealTrust

ITEM_COLUMNS = (
    "id", "occurred_at", "recorded_at", "actor_type", "actor_id", "action", "resource_type",
    "resource_id", "outcome", "source_ip", "user_agent", "request_id", "trace_id", "metadata",
    "stream_seq", "signature",
)  # fmt: skip
_SELECT = sql.SQL(", ").join(
    [*(sql.SQL(read_as(c)) for c in ITEM_COLUMNS), sql.SQL("tx_id::text::bigint AS tx_id")]
)


class BadCursor(ValueError):
    """The cursor was not one this service handed out."""


@dataclass(frozen=True)
class Filters:
    """What ``GET /audit-events`` may filter on (every one an index's leading column)."""

    actor_type: str | None = None
    actor_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: str | None = None
    source_ip: str | None = None  # an address or a CIDR
    request_id: str | None = None
    trace_id: str | None = None
    since: datetime | None = None  # occurred_at >= since
    until: datetime | None = None  # occurred_at < until
    hide_reads: bool | None = None  # leave out the records of reads (the viewer's default)

    def given(self) -> dict[str, str]:
        """The filters used, for the record of the read."""
        return {k: str(v) for k, v in vars(self).items() if v is not None}

    def where(self, inline: bool = False) -> tuple[list[sql.Composable], list[Any]]:
        """The conditions and their parameters; ``inline``: values quoted into the SQL instead
        (``COPY`` takes no parameters)."""
        clauses: list[sql.Composable] = []
        params: list[Any] = []

        def value(v: Any) -> sql.Composable:
            if inline:
                return sql.Literal(v)
            params.append(v)
            return sql.Placeholder()

        for name in ("actor_type", "actor_id", "action", "resource_type", "resource_id",
                     "outcome", "request_id", "trace_id"):  # fmt: skip
            if (given := getattr(self, name)) is not None:
                clauses.append(sql.SQL("{} = {}").format(sql.Identifier(name), value(given)))
        if self.source_ip is not None:
            network = str(ipaddress.ip_network(self.source_ip, strict=False))
            clauses.append(sql.SQL("source_ip <<= {}::inet").format(value(network)))
        if self.since is not None:
            clauses.append(sql.SQL("occurred_at >= {}").format(value(self.since)))
        if self.until is not None:
            clauses.append(sql.SQL("occurred_at < {}").format(value(self.until)))
        if self.hide_reads:
            reads = sql.SQL(", ").join(value(action) for action in READS)
            clauses.append(sql.SQL("action NOT IN ({})").format(reads))
        return clauses, params


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


MAX_CURSOR_CHARS = 256
_SESSION = re.compile(r"^[0-9a-f]{16}$")


def decode_cursor(text: str, *types: type) -> list[Any]:
    """The values :func:`encode_cursor` packed, checked against ``types`` (an aware time, a
    UUID, a 63-bit transaction id, a feed session's name); else BadCursor. Whatever a
    client sends — any JSON shape, any bytes — ends here or in BadCursor, never in an error of
    the database's."""
    if len(text) > MAX_CURSOR_CHARS:
        raise BadCursor("not a cursor this service handed out")
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise BadCursor("not a cursor this service handed out") from None
    if not isinstance(values, list) or len(values) != len(types):
        raise BadCursor("not a cursor of this listing")
    return [_cursor_value(value, kind) for value, kind in zip(values, types, strict=True)]


def _cursor_value(value: Any, kind: type) -> Any:
    try:
        if kind is datetime and isinstance(value, str):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                return moment
        elif kind is UUID and isinstance(value, str):
            return UUID(value)
        elif (kind is int and type(value) is int and -1 <= value < 2**63) or (
            kind is str and isinstance(value, str) and _SESSION.match(value)
        ):  # -1: nothing yet
            return value
    except ValueError:
        pass
    raise BadCursor("not a cursor of this listing")


def _item(row: dict[str, Any], sealed_upto: int) -> dict[str, Any]:
    """A row as the API returns it, with whether a seal covers it yet."""
    item = {c: row[c] for c in ITEM_COLUMNS}
    item["sealed"] = row["tx_id"] < sealed_upto
    return item


def page_query(
    filters: Filters, limit: int, cursor: str | None = None
) -> tuple[sql.Composed, list[Any]]:
    """The statement :func:`page` runs (the index tests explain exactly this)."""
    clauses, params = filters.where()
    if cursor:
        occurred_at, event_id = decode_cursor(cursor, datetime, UUID)
        clauses.append(sql.SQL("(occurred_at, id) < (%s, %s)"))
        params += [occurred_at, event_id]
    query = sql.SQL("SELECT {} FROM audit_events {} ORDER BY occurred_at DESC, id DESC LIMIT %s")
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    return query.format(_SELECT, where), [*params, limit]


async def page(
    conn: psycopg.AsyncConnection[Any],
    filters: Filters,
    limit: int,
    cursor: str | None,
    trust: SealTrust,
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` matching rows, newest first, after ``cursor``; and the next cursor."""
    query, params = page_query(filters, limit + 1, cursor)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
        upto = await trust.sealed_upto(conn)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    token = (
        encode_cursor(last["occurred_at"].isoformat(), str(last["id"])) if more and last else None
    )
    return [_item(r, upto) for r in rows], token


async def count(conn: psycopg.AsyncConnection[Any], filters: Filters, cap: int) -> int:
    """How many rows match, counted no further than ``cap`` + 1 (the viewer says "more than
    ``cap``" beyond: an exact count of a large log would cost a scan)."""
    clauses, params = filters.where()
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM audit_events {} LIMIT %s) s")
    row = await (await conn.execute(query.format(where), [*params, cap + 1])).fetchone()
    return int(row[0]) if row else 0


async def one(
    conn: psycopg.AsyncConnection[Any], event_id: UUID, trust: SealTrust
) -> dict[str, Any] | None:
    query = sql.SQL("SELECT {} FROM audit_events WHERE id = %s").format(_SELECT)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [event_id])
        row = await cur.fetchone()
        return _item(row, await trust.sealed_upto(conn)) if row else None


FEED = sql.SQL(
    "SELECT {} FROM audit_events WHERE (tx_id, id) > (%s::text::xid8, %s)"
    " AND tx_id < %s::text::xid8 ORDER BY audit_events.tx_id, audit_events.id LIMIT %s"
).format(_SELECT)
"""The feed's page: a range of the (tx_id, id) index, however big one transaction was (ordered
by the table's columns: ``tx_id`` in the select list is a bigint rendering of it)."""


@dataclass(frozen=True)
class FeedPage:
    items: list[dict[str, Any]]
    next_cursor: str  # always given: the place to poll from next
    session: str  # names one client's run through the feed (kept in its cursors)


async def feed(
    conn: psycopg.AsyncConnection[Any], after: str | None, limit: int, trust: SealTrust
) -> FeedPage:
    """Rows in commit-horizon order after ``after`` (from the start without it), only those no
    older transaction can still join; and the cursor to poll with next. A feed started without
    ``after`` gets a new session name, carried in every cursor that follows from it, so the
    polls of one follower can be recorded as one run."""
    if after:
        tx_id, event_id, session = decode_cursor(after, int, UUID, str)
    else:
        tx_id, event_id, session = -1, UUID(int=0), secrets.token_hex(8)

    async with conn.transaction():  # REPEATABLE READ (set by the pool): horizon and rows agree
        horizon = (await (await conn.execute(HORIZON)).fetchone() or [0])[0]
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(FEED, [max(tx_id, 0), event_id, horizon, limit])
            rows = await cur.fetchall()
        upto = await trust.sealed_upto(conn)
    if rows:
        tx_id, event_id = rows[-1]["tx_id"], rows[-1]["id"]
    return FeedPage(
        [_item(r, upto) for r in rows], encode_cursor(tx_id, str(event_id), session), session
    )


NEWEST_FIRST = sql.SQL("ORDER BY occurred_at DESC, id DESC")
"""The listing's and the export's order."""

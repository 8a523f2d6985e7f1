"""Signing retention's cuts (``audit_events/cuts.py``), inside the sealer's round: the sealing
key never leaves the consumers, and ``audit-retention`` (which holds the owner's password) only
*asks* (``audit_cut_requests``).

The sealer signs a cut only for a partition that is closed to new rows, under no active legal
hold, and whose every row is sealed — in a seal of that partition, or (rows sealed before
partitions) in a seal of scope ``''``, counted per seal; and it computes from the partition
itself what the cut states (row count, seals, broker sequences, duplicate records, first and
last feed position). The one thing it takes from the request is the archive manifest's hash,
which it cannot see: ``audit-verify --archive`` checks that against the archive.
"""

import logging
from typing import Any

import psycopg

from audit_events.cuts import LEGACY_SEALS, Cut

log = logging.getLogger("audit.sealer")

_PENDING = (  # the newest request of the last hour per partition not cut yet (a stale one is
    # not checked every round forever: retention asks again when it runs again)
    "SELECT DISTINCT ON (r.partition) r.id, r.partition, r.manifest_sha256"
    " FROM audit_cut_requests r WHERE r.requested_at > now() - interval '1 hour'"
    " AND NOT EXISTS (SELECT FROM audit_seals s"
    " WHERE s.kind = 'cut' AND s.scope = r.partition) ORDER BY r.partition, r.id DESC"
)
_PARTITION = (
    "SELECT p.lo, p.hi, p.closed, EXISTS (SELECT FROM audit_active_holds h"
    " WHERE h.lo < p.hi AND h.hi > p.lo) FROM audit_partitions p WHERE p.name = %s"
)
_SEALED = (
    "SELECT coalesce(array_agg(seq ORDER BY seq), '{}'), coalesce(sum(row_count), 0)::bigint"
    " FROM audit_seals WHERE kind = 'rows' AND scope = %s"
)
_ROWS = (  # rows in the partition, and how many of them no seal covers yet
    "SELECT count(*), count(*) FILTER (WHERE tx_id >= %s::text::xid8) FROM audit_events"
    " WHERE tableoid = %s::regclass"
)
_FIRST = (  # the first and last feed position in the partition (its (tx_id, id) index)
    "SELECT tx_id::text::bigint, id::text FROM audit_events WHERE tableoid = %s::regclass"
    " ORDER BY tx_id, id LIMIT 1"
)
_LAST = (
    "SELECT tx_id::text::bigint, id::text FROM audit_events WHERE tableoid = %s::regclass"
    " ORDER BY tx_id DESC, id DESC LIMIT 1"
)
_RUNS = (  # the broker sequences the partition holds, as runs per epoch
    "SELECT epoch, min(stream_seq), max(stream_seq) FROM (SELECT epoch, stream_seq,"
    " stream_seq - dense_rank() OVER (PARTITION BY epoch ORDER BY stream_seq) AS run"
    " FROM audit_events WHERE tableoid = %s::regclass AND epoch IS NOT NULL) s"
    " GROUP BY epoch, run ORDER BY epoch, 2"
)
_DUPLICATES = (
    "SELECT d.epoch, d.stream_seq FROM audit_duplicates d JOIN audit_events e"
    " ON e.id = d.event_id AND e.tableoid = %s::regclass ORDER BY 1, 2"
)


async def pending_cuts(conn: psycopg.AsyncConnection[Any], sealed_upto: int) -> list[Cut]:
    """The cuts to sign now, in the sealer's REPEATABLE READ snapshot after this round's seals
    (every transaction below ``sealed_upto`` is sealed)."""
    cuts = []
    for request, partition, manifest in await (await conn.execute(_PENDING)).fetchall():
        if cut := await _cut(conn, request, partition, bytes(manifest).hex(), sealed_upto):
            cuts.append(cut)
    return cuts


async def _cut(
    conn: psycopg.AsyncConnection[Any], request: int, partition: str, manifest: str, upto: int
) -> Cut | None:
    found = await (await conn.execute(_PARTITION, (partition,))).fetchone()
    if found is None:
        log.warning("cut request %d: no partition %s", request, partition)
        return None
    lo, hi, closed, held = found
    if not closed or held:
        log.warning("cut request %d: %s is %s", request, partition,
                    "under a legal hold" if held else "still open")  # fmt: skip
        return None
    rows, unsealed = await (await conn.execute(_ROWS, (upto, partition))).fetchone()  # type: ignore[misc]
    if unsealed:
        log.info("cut request %d: %d rows of %s not sealed yet", request, unsealed, partition)
        return None
    seals, sealed = await (await conn.execute(_SEALED, (partition,))).fetchone()  # type: ignore[misc]
    first = await (await conn.execute(_FIRST, (partition,))).fetchone()
    last = await (await conn.execute(_LAST, (partition,))).fetchone()
    legacy: dict[int, int] = {}
    if rows > sealed and first and last:  # rows sealed before partitions, in scope-'' seals
        span = {"p": partition, "first": first[0], "last": last[0]}
        legacy = {seq: n for seq, n in await (await conn.execute(LEGACY_SEALS, span)).fetchall()
                  if n}  # fmt: skip
    if sealed + sum(legacy.values()) != rows:
        log.warning("cut request %d: %s has %d rows, its seals list %d", request, partition,
                    rows, sealed + sum(legacy.values()))  # fmt: skip
        return None
    sequences: dict[int, list[tuple[int, int]]] = {}
    for epoch, a, b in await (await conn.execute(_RUNS, (partition,))).fetchall():
        sequences.setdefault(epoch, []).append((a, b))
    duplicates = await (await conn.execute(_DUPLICATES, (partition,))).fetchall()
    return Cut(
        partition=partition, lo=lo, hi=hi, rows=rows, seals=tuple(seals),
        manifest_sha256=manifest, request=request, sequences=sequences,
        duplicates=tuple((e, s) for e, s in duplicates),
        first=(first[0], first[1]) if first else None, last=(last[0], last[1]) if last else None,
        legacy=legacy,
    )  # fmt: skip

"""Completeness: every broker sequence up to an ack floor a valid seal recorded is accounted for
(``audit_consumer/accounting.py`` says how the pipeline keeps that true), and every duplicate
record repeats an event that is stored. The check is one sort of the sequences per epoch, in
PostgreSQL: no index, so nothing added to the cost of ingest."""

from collections.abc import Sequence
from typing import Any

import psycopg

from audit_events.cuts import Cut
from audit_events.seals import Floor, Seal
from audit_verify.report import Report

_GAPS = (  # unaccounted runs of [first, floor] in one epoch (sentinels at both ends)
    "SELECT s + 1, nxt - 1 FROM (SELECT s, lead(s) OVER (ORDER BY s) AS nxt FROM ("
    " SELECT stream_seq AS s FROM audit_events WHERE epoch = %(e)s"
    " AND stream_seq BETWEEN %(first)s AND %(floor)s"
    " UNION SELECT stream_seq FROM audit_dead_letters WHERE epoch = %(e)s"
    " AND stream_seq BETWEEN %(first)s AND %(floor)s"
    " UNION SELECT stream_seq FROM audit_duplicates WHERE epoch = %(e)s"
    " AND stream_seq BETWEEN %(first)s AND %(floor)s"
    " UNION SELECT generate_series(greatest(lo, %(first)s), least(hi, %(floor)s))"
    " FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS c(lo, hi)"  # removed by cuts
    " UNION SELECT %(first)s - 1 UNION SELECT %(floor)s + 1) a) g WHERE nxt > s + 1 ORDER BY s"
)
_ORPHANS = (  # duplicate records whose event is not stored
    "SELECT d.epoch, d.stream_seq, d.event_id::text FROM audit_duplicates d"
    " WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = d.event_id)"
    " ORDER BY d.epoch, d.stream_seq"
)


def completeness(
    conn: psycopg.Connection[Any], seals: list[Seal], cuts: Sequence[Cut] = ()
) -> Report:
    """Every sequence up to the highest ack floor a valid seal recorded, per epoch, is a row, a
    dead-letter record, a duplicate record or removed by a valid cut; and every duplicate
    repeats a stored event (or one a cut removed)."""
    report = Report()
    removed = {d for cut in cuts for d in cut.duplicates}
    floors: dict[int, Floor] = {}
    for seal in seals:
        if (floor := seal.floor) and floor.seq >= floors.get(floor.epoch, floor).seq:
            floors[floor.epoch] = floor
    for epoch, floor in sorted(floors.items()):
        if floor.seq < floor.first:
            continue
        runs = [run for cut in cuts for run in cut.sequences.get(epoch, [])]
        bounds = {"e": epoch, "first": floor.first, "floor": floor.seq,
                  "los": [a for a, _ in runs], "his": [b for _, b in runs]}  # fmt: skip
        for start, end in conn.execute(_GAPS, bounds).fetchall():
            seqs = f"{start}" if start == end else f"{start}-{end}"
            report.findings.append(
                f"epoch {epoch}, stream seq {seqs}: acknowledged by the broker,"
                " neither stored nor dead-lettered"
            )
        report.accounted += floor.seq - floor.first + 1
    for epoch, seq, event_id in conn.execute(_ORPHANS).fetchall():
        if (epoch, seq) in removed:
            continue
        report.findings.append(
            f"epoch {epoch}, stream seq {seq}: recorded as a duplicate of {event_id},"
            " which is not stored"
        )
    return report

"""Cuts (``audit_events/cuts.py``): what retention removed, checked against the chain.

A cut with a valid signature is still named when it claims what the chain contradicts: seals
that are not the partition's row seals, a row count that is not theirs, or a partition under a
legal hold when it was signed (a hold's history is append-only: ``audit_holds`` and
``audit_hold_releases``). The rows of a valid cut's seals are not looked for (they are in the
archive: ``audit-verify --archive``), its broker sequences and duplicate records count as
accounted for; a row deleted outside a cut is still ``deleted``.
"""

from datetime import datetime
from typing import Any

import psycopg

from audit_events.cuts import Cut
from audit_events.seals import Seal
from audit_verify.report import Report

_HOLDS = (
    "SELECT h.id, h.lo, h.hi, h.created_at, r.released_at FROM audit_holds h"
    " LEFT JOIN audit_hold_releases r ON r.hold_id = h.id"
)


def cuts(
    conn: psycopg.Connection[Any], seals: list[Seal], bad: set[int]
) -> tuple[Report, list[Cut], frozenset[int]]:
    """The valid cuts, and the seals whose rows they removed (a seal of scope ``''`` only in
    part: ``legacy_removed``); findings for the rest."""
    report, valid, covered = Report(), [], set[int]()
    by_seq = {seal.seq: seal for seal in seals}
    scoped: dict[str, list[int]] = {}  # each partition's row seals, in chain order (read once)
    for seal in seals:
        if seal.kind == "rows" and seal.scope:
            scoped.setdefault(seal.scope, []).append(seal.seq)
    holds: list[tuple[int, datetime, datetime, datetime, datetime | None]] = []
    if any(seal.kind == "cut" for seal in seals):
        holds = conn.execute(_HOLDS).fetchall()
    for seal in seals:
        if seal.kind != "cut" or seal.seq in bad:
            continue
        try:
            cut = Cut.parse(seal.body)
        except ValueError as exc:
            report.findings.append(f"seal #{seal.seq}: {exc}")
            continue
        if why := _contradiction(cut, seal, by_seq, scoped.get(cut.partition, []), holds):
            report.findings.append(f"seal #{seal.seq}: forged cut of {cut.partition}: {why}")
            continue
        valid.append(cut)
        covered.update(cut.seals)
    return report, valid, frozenset(covered)


def _contradiction(
    cut: Cut,
    seal: Seal,
    by_seq: dict[int, Seal],
    partition_seals: list[int],
    holds: list[tuple[int, datetime, datetime, datetime, datetime | None]],
) -> str | None:
    if seal.scope != cut.partition:
        return f"its scope is {seal.scope!r}"
    listed = [by_seq.get(seq) for seq in cut.seals]
    if any(s is None or s.kind != "rows" or s.scope != cut.partition or s.seq > seal.seq
           for s in listed):  # fmt: skip
        return "it names seals that are not the partition's"
    legacy = [by_seq.get(seq) for seq in cut.legacy]
    if any(s is None or s.kind != "rows" or s.scope != "" or s.seq > seal.seq for s in legacy):
        return "it names seals before partitions that are not"
    counted = sum(s.row_count for s in listed if s) + sum(cut.legacy.values())
    if counted != cut.rows or seal.row_count != cut.rows:
        return "its row count is not its seals'"
    if [seq for seq in partition_seals if seq < seal.seq] != sorted(cut.seals):
        return "it leaves seals of the partition out"
    at = seal.sealed_at
    for hold, lo, hi, created, released in holds:
        if lo < cut.hi and hi > cut.lo and created <= at and (released is None or released > at):
            return f"the partition was under legal hold #{hold}"
    return None


def legacy_removed(valid: list[Cut]) -> dict[int, int]:
    """Per seal of scope ``''``, how many of its rows valid cuts removed."""
    removed: dict[int, int] = {}
    for cut in valid:
        for seq, n in cut.legacy.items():
            removed[seq] = removed.get(seq, 0) + n
    return removed

"""One retention run: for each partition wholly older than the policy and under no legal hold,
in this order —

1. **close** it: a trigger refuses new rows (late events, replays, imports are dead-lettered by
   the consumers with the reason) while its rows stay readable;
2. wait until every row in it is **sealed** (a seal of that partition lists it);
3. write the **archive** and check it against the seals (``audit-verify``'s own check), then
   upload it when the archive is object storage (written locally first, in ``staging``);
4. ask for the **cut** (``audit_cut_requests``, with the manifest's SHA-256) and wait for a
   consumer's sealer to sign it — this job never holds the sealing key;
5. **finish**: the archive checked to be where it belongs (written again, to the bytes the
   cut signed, when a rerun finds it gone), the signed cut beside it, ``DETACH …
   CONCURRENTLY`` (writers keep writing to the other partitions) and ``DROP``, then the cut
   seals' entries emptied (they are in the archive), and the removal recorded as an audit
   event (``recording.py``).

Crash anywhere and run again: every step looks at what is there before acting (a closed
partition is not closed again, a cut is not asked for twice, a finished cut is finished), so a
rerun finishes or changes nothing. Two runs at once: the second finds the lock taken and exits
(0: nothing failed, and a run that never ends shows as ``AuditRetentionBehind``).
Runs as the table's owner (the DDL needs it): a short-lived job, the only one that holds the
owner's password besides ``audit-setup``.
"""

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from audit_events import AuditEvent
from audit_events.archives import CUT, MANIFEST, seal_line, sha256_hex
from audit_events.cuts import Cut
from audit_events.seals import SEAL_COLUMNS, Seal, SealKeys, seal_of
from audit_retention.archiving import write_archive
from audit_retention.recording import removal
from audit_verify.archived import check_archive
from audit_verify.locations import fetch, is_s3, upload

log = logging.getLogger("audit.retention")

LOCK = 0x61756469745F7265  # "audit_re": one retention run at a time, per database
_CANDIDATES = (
    "SELECT p.name, p.lo, p.hi, p.closed, (SELECT min(h.id) FROM audit_active_holds h"
    " WHERE h.lo < p.hi AND h.hi > p.lo) FROM audit_partitions p"
    " WHERE p.hi <= now() - make_interval(days => %s) ORDER BY p.lo"
)
_SEALED = (  # no row of the partition beyond the newest seal's range (the archive's check
    # against the seals' entries then proves each row is listed)
    "SELECT NOT EXISTS (SELECT FROM audit_events WHERE tableoid = %s::regclass AND tx_id >="
    " coalesce((SELECT upto_tx FROM audit_seals ORDER BY seq DESC LIMIT 1), '0'::xid8))"
)
_CUTS = f"SELECT {SEAL_COLUMNS} FROM audit_seals WHERE kind = 'cut'"  # noqa: S608
_CUTS_OF = _CUTS + " AND scope = ANY(%s)"
_BOUNDS = "SELECT lo, hi FROM audit_partitions WHERE name = %s"
_HELD = (
    "SELECT min(id) FROM audit_active_holds WHERE lo < %(hi)s AND hi > %(lo)s HAVING count(*) > 0"
)
_UNRECORDED = (  # a removal's record not stored yet, and still storable: one that aged out
    # with its own partition was stored once, and published again it would be dead-lettered
    # as too old — by every run after
    "SELECT NOT EXISTS (SELECT FROM audit_events WHERE id = %s)"
    " AND %s >= (SELECT min(lo) FROM audit_partitions WHERE NOT closed)"
)


class Failed(Exception):
    """A check failed or a wait ran out: exit 1, nothing removed that was not proven."""


class Busy(Exception):
    """Another run holds the lock: nothing failed, that run does the work (exit 0)."""


@dataclass
class Policy:
    days: int
    archive: Path | str  # a directory, or s3://bucket/prefix (audit_verify/locations.py)
    keys: SealKeys
    record: Callable[[list[AuditEvent]], None]  # publishes the record of each removal
    dry_run: bool = False
    wait_seconds: float = 120.0
    staging: Path = Path(tempfile.gettempdir()) / "audit-archive"  # before an upload to S3

    @property
    def folder(self) -> Path:
        """Where archives are written (and checked) on this machine."""
        return self.staging if is_s3(str(self.archive)) else Path(self.archive)


def run(conn: psycopg.Connection[Any], policy: Policy) -> list[str]:
    """One run over ``conn`` (the owner's, autocommit): the partitions removed (or, dry, that
    would be). Every candidate is closed before the first wait, archived, and then every cut
    asked for at once: a consumer's sealer seals and cuts all of them in the same rounds, so a
    first run over months of partitions takes its archiving plus seconds, not a round per
    partition. Raises :class:`Failed`."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK,)).fetchone()[0]:  # type: ignore[index]
        raise Busy("another retention run is in progress: this one leaves it the work")
    earlier = {seal.scope: seal for seal in map(seal_of, conn.execute(_CUTS).fetchall())}
    if not policy.dry_run:
        for seal in earlier.values():  # a run that stopped after a cut (or a hold came after)
            finish(conn, policy, seal)
    due = []
    for name, lo, hi, closed, hold in conn.execute(_CANDIDATES, (policy.days,)).fetchall():
        if hold is None:
            due.append((name, lo, hi, closed))
            continue
        log.info("%s is under legal hold #%d: kept", name, hold)
        if closed and name not in earlier and not policy.dry_run:  # (a cut one stays closed)
            _reopen(conn, name)
    if policy.dry_run:
        for name, lo, hi, _ in due:
            rows = conn.execute(
                "SELECT count(*) FROM audit_events WHERE tableoid = %s::regclass", (name,)
            ).fetchone()
            log.info("would archive and remove %s [%s, %s): %d rows", name, lo, hi,
                     rows[0] if rows else 0)  # fmt: skip
        return [name for name, *_ in due]
    for name, _, _, closed in due:
        if not closed:
            _close(conn, name)
    manifests = [(name, archive(conn, policy, name, lo, hi)) for name, lo, hi, _ in due]
    # Asked for together once every archive is written: a consumer's sealer looks only at the
    # last hour's requests, and archiving months of partitions may take longer than that.
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO audit_cut_requests (partition, manifest_sha256) VALUES (%s, sha256(%s))",
            manifests,
        )
    cuts: dict[str, Seal] = {}

    def signed() -> bool:
        found = conn.execute(_CUTS_OF, ([name for name, *_ in due],)).fetchall()
        cuts.update((seal.scope, seal) for seal in map(seal_of, found))
        return all(name in cuts for name, *_ in due)

    _until(policy, f"the cuts of {len(due)} partition(s) signed by a consumer's sealer", signed)
    return [name for name, *_ in due if finish(conn, policy, cuts[name])]


def archive(conn: psycopg.Connection[Any], policy: Policy, name: str, lo: Any, hi: Any) -> bytes:
    """Steps 2 and 3 for a closed partition: sealed, archived and checked. The manifest."""
    _until(policy, f"every row of {name} sealed",
           lambda: conn.execute(_SEALED, (name,)).fetchone() == (True,))  # fmt: skip
    path, manifest = write_archive(conn, policy.folder, name, lo, hi)
    report = check_archive(path, policy.keys, with_cut=False)
    if report.findings:
        raise Failed(f"the archive of {name} does not match its seals: {report.findings[:3]}")
    if is_s3(str(policy.archive)):
        upload(path, str(policy.archive))
    log.info("archived %s: %d rows to %s", name, report.rows, policy.archive)
    return manifest


def finish(conn: psycopg.Connection[Any], policy: Policy, seal: Seal) -> bool:
    """After the cut: the cut into the archive, the partition detached and dropped, its seals'
    entries emptied. Each part is skipped when already done. False: kept, under a hold."""
    cut = Cut.parse(seal.body)
    ident = sql.Identifier(cut.partition)
    state = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, (SELECT inhdetachpending FROM pg_inherits"
        " WHERE inhrelid = to_regclass(%s))", (cut.partition, cut.partition)
    ).fetchone()  # fmt: skip
    exists, pending = state if state else (False, None)
    if exists:
        if hold := conn.execute(_HELD, {"lo": cut.lo, "hi": cut.hi}).fetchone():
            # A hold that came after the cut was signed: the rows stay (closed, readable, cut
            # in the chain) until it is released; a later run then finishes.
            log.warning("%s: under legal hold #%d since its cut #%d: kept until released",
                        cut.partition, hold[0], seal.seq)  # fmt: skip
            return False
        _kept(conn, policy, seal, cut, attached=pending is False)
        if pending is False:
            conn.execute(sql.SQL("ALTER TABLE audit_events DETACH PARTITION {} CONCURRENTLY")
                         .format(ident))  # fmt: skip
        elif pending:
            conn.execute(sql.SQL("ALTER TABLE audit_events DETACH PARTITION {} FINALIZE")
                         .format(ident))  # fmt: skip
        conn.execute(sql.SQL("DROP TABLE {}").format(ident))
        log.info("removed %s (%d rows; cut #%d)", cut.partition, cut.rows, seal.seq)
    emptied = conn.execute(
        "UPDATE audit_seals SET entries = ''::bytea WHERE seq = ANY(%s) AND entries <> ''::bytea",
        (list(cut.seals),),
    ).rowcount
    if emptied:
        log.info("cut #%d: entries of %d seals moved to the archive", seal.seq, emptied)
    record = removal(seal, cut)
    if conn.execute(_UNRECORDED, (record.id, record.occurred_at)).fetchone() == (True,):
        policy.record([record])  # (until a consumer stored it; JetStream dedupes a repeat)
    return True


def _kept(conn: psycopg.Connection[Any], policy: Policy, seal: Seal, cut: Cut,
          attached: bool) -> None:  # fmt: skip
    """Before a partition goes: its archive is where the policy keeps them, with the manifest
    its cut signed, and the cut beside it. A rerun may find it missing (a new pod's staging is
    empty; someone moved it): then it is written again from the rows still there — the same
    bytes, or :class:`Failed` and nothing removed."""
    name, url = cut.partition, str(policy.archive)
    folder = policy.folder / name
    if is_s3(url):
        kept = fetch(url, name, MANIFEST)
    else:
        kept = (folder / MANIFEST).read_bytes() if (folder / MANIFEST).exists() else None
    if kept is None or sha256_hex(kept) != cut.manifest_sha256:
        bounds = conn.execute(_BOUNDS, (name,)).fetchone()
        if not attached or bounds is None:
            raise Failed(f"{name}: not removed: its archive is missing from {url} and the"
                         " partition is detached, so it cannot be written again")  # fmt: skip
        path, manifest = write_archive(conn, policy.folder, name, *bounds)
        if sha256_hex(manifest) != cut.manifest_sha256:
            raise Failed(f"{name}: not removed: its archive, written again, differs from the"
                         " one its cut signed")  # fmt: skip
        if is_s3(url):
            upload(path, url)
        log.info("%s: archive written again (it was missing or changed at %s)", name, url)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CUT).write_bytes(seal_line(seal, b""))
    if is_s3(url):
        upload(folder, url, [CUT])


def _close(conn: psycopg.Connection[Any], name: str) -> None:
    """Refuse new rows into ``name`` (a brief lock on it alone, never queued for long)."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '5s'")
        conn.execute(
            sql.SQL("CREATE TRIGGER audit_events_closed BEFORE INSERT ON {} FOR EACH ROW"
                    " EXECUTE FUNCTION audit_events_refuse()").format(sql.Identifier(name))
        )  # fmt: skip
    log.info("closed %s to new rows", name)


def _reopen(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP TRIGGER audit_events_closed ON {}").format(sql.Identifier(name)))
    log.info("reopened %s (held)", name)


def _until(policy: Policy, what: str, done: Any) -> None:
    deadline = time.monotonic() + policy.wait_seconds
    while not done():
        if time.monotonic() > deadline:
            raise Failed(f"waited {policy.wait_seconds:.0f}s for {what} (are consumers running?)")
        time.sleep(0.5)

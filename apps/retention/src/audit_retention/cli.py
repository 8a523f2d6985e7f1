"""``audit-retention``: ``run`` (the policy: ``AUDIT_RETENTION_DAYS``, ``AUDIT_ARCHIVE_URL``),
``hold add|list|remove`` (legal holds), ``partitions`` (list, or create for a past range).
Exit 0 done or nothing to do (another run in progress included), 1 a check failed, 2 could not
run. Connects as the table's owner (``DATABASE_URL``): the DDL of removing a partition needs it."""

import argparse
import getpass
import logging
import sys
import time as time_module
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import nats.errors
import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_events.publishing import ProducerSettings
from audit_events.seals import SealKeys
from audit_retention.recording import Recorder, hold
from audit_retention.removal import Busy, Failed, Policy, run

log = logging.getLogger("audit.retention")


class RetentionSettings(BaseSettings):
    """The database and the policy (the broker and the record's key: ``ProducerSettings``)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_ignore_empty=True)

    database_url: str = Field("", alias="DATABASE_URL")
    days: int | None = Field(None, ge=1, alias="AUDIT_RETENTION_DAYS")
    archive_url: str = Field("", alias="AUDIT_ARCHIVE_URL")
    seal_public_keys: str = Field("", alias="AUDIT_SEAL_PUBLIC_KEYS")
    partition_days: int = Field(1, ge=1, le=31, alias="AUDIT_PARTITION_DAYS")


def _day(text: str) -> datetime:
    return datetime.combine(date.fromisoformat(text), time(), UTC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit-retention", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="archive and remove partitions older than the policy")
    go.add_argument("--days", type=int, help="keep this many days (AUDIT_RETENTION_DAYS)")
    go.add_argument("--archive", help="a directory or s3://bucket/prefix (AUDIT_ARCHIVE_URL)")
    go.add_argument("--dry-run", action="store_true", help="say what it would do, do nothing")
    go.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the sealer")
    go.add_argument("--every", type=float, help="keep running: a run every N seconds")
    hold = commands.add_parser("hold", help="legal holds: time ranges no run may remove")
    holds = hold.add_subparsers(dest="verb", required=True)
    add = holds.add_parser("add")
    add.add_argument("--from", dest="lo", type=_day, required=True, help="YYYY-MM-DD")
    add.add_argument("--to", dest="hi", type=_day, required=True, help="YYYY-MM-DD (excluded)")
    add.add_argument("--reason", required=True)
    add.add_argument("--actor", help="who (recorded; default: the login name)")
    holds.add_parser("list")
    release = holds.add_parser("remove")
    release.add_argument("id", type=int)
    release.add_argument("--reason", required=True)
    release.add_argument("--actor", help="who (recorded; default: the login name)")
    parts = commands.add_parser("partitions", help="list partitions, or create past ones")
    parts.add_argument("--from", dest="lo", type=_day, help="create partitions back to this day")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = RetentionSettings()
    try:
        if not settings.database_url:
            raise ValueError("set DATABASE_URL (the owner's login)")
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET TimeZone TO 'UTC'")
            sys.exit(_command(conn, args, settings))
    except Failed as exc:
        log.error("retention stopped: %s", exc)
        sys.exit(1)
    except (psycopg.Error, OSError, ValueError, nats.errors.Error, BotoCoreError,
            ClientError) as exc:  # fmt: skip
        print(f"could not run: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        sys.exit(2)


def _command(conn: psycopg.Connection[Any], args: argparse.Namespace, s: RetentionSettings) -> int:
    if args.command == "run":
        days = args.days or s.days
        if days is None:
            log.warning("retention is OFF: AUDIT_RETENTION_DAYS is not set, nothing is removed")
            return 0
        archive = args.archive or s.archive_url
        if not archive or ("://" in archive and not archive.startswith("s3://")):
            raise ValueError(
                "set AUDIT_ARCHIVE_URL (or --archive): a directory or s3://bucket/prefix"
            )
        policy = Policy(days, archive if "://" in archive else Path(archive),
                        SealKeys.parse(s.seal_public_keys), _recorder(), args.dry_run,
                        args.wait)  # fmt: skip
        log.warning("retention: keeping %d days; older partitions are archived to %s and"
                    " REMOVED%s", days, archive, " (dry run)" if args.dry_run else "")  # fmt: skip
        while True:
            try:
                removed = run(conn, policy)
                log.info("%s %d partition(s)", "would remove" if args.dry_run else "removed",
                         len(removed))  # fmt: skip
            except Busy as exc:
                log.info("%s", exc)
            if args.every is None:
                return 0
            conn.execute("SELECT pg_advisory_unlock_all()")  # the next run takes it again
            time_module.sleep(args.every)
    if args.command == "hold":
        return _hold(conn, args)
    if args.lo is not None:
        made = conn.execute(
            "SELECT audit_partitions_prepend(%s, %s)", (args.lo, timedelta(days=s.partition_days))
        ).fetchone()
        log.info("created %d partition(s)", made[0] if made else 0)
    for name, lo, hi, closed in conn.execute(
        "SELECT name, lo, hi, closed FROM audit_partitions ORDER BY lo"
    ).fetchall():
        print(
            f"{name}\t{lo:%Y-%m-%dT%H:%MZ}\t{hi:%Y-%m-%dT%H:%MZ}\t{'closed' if closed else 'open'}"
        )
    return 0


def _recorder() -> Recorder:
    """Every removal and hold is recorded: no key or broker password, no run."""
    try:
        return Recorder(ProducerSettings())
    except ValidationError as exc:
        raise ValueError(
            f"{exc.errors()[0]['msg']} (audit-retention records what it does)"
        ) from None


def _hold(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    """A hold added or released, in one transaction with its record published: a hold the
    record of which could not be published is not kept."""
    record = _recorder() if args.verb != "list" else None
    actor = args.actor or getpass.getuser()
    if record and args.verb == "add":
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO audit_holds (lo, hi, reason) VALUES (%s, %s, %s) RETURNING id",
                (args.lo, args.hi, args.reason),
            ).fetchone()
            hold_id = row[0] if row else 0
            details = {"from": args.lo.isoformat(), "to": args.hi.isoformat(),
                       "reason": args.reason}  # fmt: skip
            record([hold("added", actor, hold_id, details)])
        print(f"hold #{hold_id}: {args.lo:%Y-%m-%d} to {args.hi:%Y-%m-%d}")
    elif record:
        with conn.transaction():
            conn.execute(
                "INSERT INTO audit_hold_releases (hold_id, reason) VALUES (%s, %s)",
                (args.id, args.reason),
            )
            record([hold("released", actor, args.id, {"reason": args.reason})])
        print(f"hold #{args.id} released")
    else:
        print("id\tfrom\tto\tby\treason\treleased")
        for row in conn.execute(
            "SELECT h.id, h.lo, h.hi, h.created_by, h.reason, r.released_at"
            " FROM audit_holds h LEFT JOIN audit_hold_releases r ON r.hold_id = h.id ORDER BY h.id"
        ).fetchall():
            hid, lo, hi, by, reason, released = row
            print(f"{hid}\t{lo:%Y-%m-%d}\t{hi:%Y-%m-%d}\t{by}\t{reason}\t{released or '-'}")
    return 0

"""``audit-verify``: the command. Runs the check once (exit 0 intact, 1 something found, one
line per finding, 2 could not check: no database, no key, bad option), or with ``--every`` keeps
running, each run pinning the seal head the one before saw, its result exported as gauges for
Prometheus (``AuditVerify*`` alerts)."""

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Gauge, start_http_server

from audit_events.seals import SealKeys
from audit_verify.archived import check_archives
from audit_verify.checker import VerifySettings, verify
from audit_verify.locations import download, is_s3

_DURATION = re.compile(r"^(\d+)([smhd])$")


def since_arg(text: str) -> datetime:
    """``--since``: an ISO 8601 time with offset, or a duration back from now (``90m``, ``2d``)."""
    if match := _DURATION.match(text):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return datetime.now(UTC) - timedelta(**{unit: int(match[1])})
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give the offset, e.g. 2026-11-28T10:00:00+00:00")
    return moment


def head_arg(text: str) -> str:
    if not re.fullmatch(r"\d+:[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError("expected <seq>:<64 hex digits>, as a seal log line says")
    return text


VERIFY_OK = Gauge("audit_verify_ok", "1 if the last verification found the log intact")
VERIFY_FINDINGS = Gauge("audit_verify_findings", "Problems the last verification found")
VERIFY_UNSIGNED = Gauge("audit_verify_unsigned_rows", "Sealed rows without authorship")
VERIFY_LAST = Gauge("audit_verify_last_run_timestamp_seconds", "When the last check finished")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="audit-verify", description="Prove the audit log is what the pipeline wrote."
    )
    parser.add_argument("--since", type=since_arg, help="check rows of seals made since then")
    parser.add_argument("--head", type=head_arg, help="a seal head recorded earlier (seq:hash)")
    parser.add_argument(
        "--grace", type=float, default=60.0, help="seconds a row may wait for its seal"
    )
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--every", type=float, help="keep running: check every N seconds")
    parser.add_argument("--metrics-port", type=int, default=9102, help="with --every")
    parser.add_argument(
        "--archive",
        help="check retention's archives there instead (a directory or s3://bucket/prefix;"
        " no database)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = VerifySettings()
    if args.archive is not None:
        sys.exit(_check_archives(settings, args.archive))
    options = {"since": args.since, "grace": timedelta(seconds=args.grace), "jobs": args.jobs}
    if args.every is None:
        sys.exit(_check(settings, args.head, **options)[0])
    start_http_server(args.metrics_port)
    head = args.head
    while True:  # each run pins the head the previous one saw
        head = _check(settings, head, **options)[1] or head
        time.sleep(args.every)


def _check_archives(settings: VerifySettings, location: str) -> int:
    try:
        keys = SealKeys.parse(settings.seal_public_keys)
        if is_s3(location):
            with tempfile.TemporaryDirectory() as tmp:
                report = check_archives(download(location, Path(tmp)), keys)
        else:
            report = check_archives(Path(location), keys)
    except (OSError, ValueError, BotoCoreError, ClientError) as exc:
        print(f"could not check: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    for line in report.findings:
        print(line)
    verdict = f"FOUND {len(report.findings)} problem(s)" if report.findings else "intact"
    print(f"{verdict}: {report.cuts} archive(s), {report.rows} rows", flush=True)
    return 1 if report.findings else 0


def _check(settings: VerifySettings, head: str | None, **options: Any) -> tuple[int, str]:
    """One run, printed and exported: (exit status, the head it saw)."""
    try:
        report = verify(settings, head=head, **options)
    except (psycopg.Error, OSError, ValueError) as exc:
        print(f"could not check: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        VERIFY_OK.set(0)
        return 2, ""
    for line in report.findings:
        print(line)
    print(report.summary(), flush=True)
    VERIFY_OK.set(0 if report.findings else 1)
    VERIFY_FINDINGS.set(len(report.findings))
    VERIFY_UNSIGNED.set(report.unsigned)
    VERIFY_LAST.set_to_current_time()
    return (1 if report.findings else 0), report.head

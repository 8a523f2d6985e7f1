"""What every benchmark module shares: the run's constants and keys, the events it sends, one
percentile helper, and the CPU meter that says what each process spent per event."""

import contextlib
import runpy
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil

from audit_events import COLUMNS, AuditEvent, StreamNames, uuid7
from audit_events.authorship import EventKeys
from audit_events.seals import generate_seal_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EMPTY_LOG = (
    "TRUNCATE audit_events, audit_seals, audit_dead_letters, audit_duplicates, audit_epochs"
    " RESTART IDENTITY"
)
SECRET = "bench-secret-0123456789abcdef0123456789"
NAMES = StreamNames()
PASSWORD = secrets.token_urlsafe(18)
METADATA = COLUMNS.index("metadata")  # the jsonb column
SUBJECT = NAMES.event_subject("account.update")
QUERY_INDEXES: dict[str, str] = runpy.run_path(
    str(ROOT / "migrations" / "versions" / "0004_query_indexes.py")
)["INDEXES"]
EVENT_KEY = secrets.token_urlsafe(32)
KEYS = EventKeys([EVENT_KEY])
SEAL_KEY = generate_seal_key()


def event(i: int) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "id": uuid7(),
            "occurred_at": datetime.now(UTC),
            "actor_type": "user",
            "actor_id": f"user-{i % 97}",
            "action": "account.update",
            "resource_type": "account",
            "resource_id": f"acc-{i % 1009}",
            "outcome": "success",
            "source_ip": "10.1.2.3",
            "user_agent": "bench/1.0",
            "request_id": f"req-{i}",
            "metadata": {
                "method": "PATCH",
                "path": f"/accounts/acc-{i % 1009}",
                "status": 200,
                "fields": ["email", "plan"],
            },
        }
    )


class CpuMeter:
    """CPU seconds each group of processes (with their children) used between ``start`` and
    ``stop``: what the pipeline costs per event, and so what the machine could do at most.
    A process counts in the first group whose tree holds it (the servers are this script's
    children too: list this script last)."""

    def __init__(self, **groups: list[int]) -> None:
        self.groups = groups
        self.before: dict[int, float] = {}

    def _cpu(self) -> dict[str, dict[int, float]]:
        claimed: set[int] = set()
        found: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            found[name] = {}
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        if proc.pid in claimed:
                            continue
                        with contextlib.suppress(psutil.Error):
                            times = proc.cpu_times()
                            found[name][proc.pid] = times.user + times.system
                            claimed.add(proc.pid)
        return found

    def start(self) -> None:
        self.before = {pid: t for procs in self._cpu().values() for pid, t in procs.items()}

    def stop(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event, per group."""
        return {
            name: sum(t - self.before.get(pid, 0.0) for pid, t in procs.items()) / events * 1e6
            for name, procs in self._cpu().items()
        }

"""Test doubles for unit tests (integration tests use real NATS and PostgreSQL): the API's
publisher, and the consumer's pull source, writer and JetStream, which all log to one
timeline so a test can check the order of commit, dead letter and ack."""

from typing import Any

import psycopg
from nats.aio.msg import Msg
from nats.js.api import PubAck

from audit_consumer.writer import WriteResult
from audit_events import COLUMNS, AuditEvent
from audit_events.authorship import SIGNATURE_HEADER
from audit_events.publishing import PublishUnavailable
from tests.helpers import sign


class FakePublisher:
    """Records what was published; ``fail = True`` makes it behave like an unreachable broker."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.fail = False

    @property
    def ready(self) -> bool:
        return not self.fail

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, event: AuditEvent) -> None:
        if self.fail:
            raise PublishUnavailable("not_connected", "broker down (fake)")
        self.events.append(event)


ACK, NAK, PROGRESS = b"", b"-NAK", b"+WPI"


class Log:
    """One timeline of everything the loop did, to check the order of commit, DLQ and ack."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []

    def __call__(self, what: str, detail: Any = None) -> None:
        self.entries.append((what, detail))

    def of(self, what: str) -> list[Any]:
        return [d for w, d in self.entries if w == what]

    def first(self, what: str) -> int:
        return next(i for i, (w, _) in enumerate(self.entries) if w == what)


class FakeClient:
    """Stands in for the NATS connection a message acks through."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        kind = {ACK: "ack", NAK: "nak", PROGRESS: "in_progress"}[payload]
        self.log(kind, int(subject.split(".")[5]))  # the stream sequence


def message(log: Log, seq: int, data: bytes, signed: bool = True) -> Msg:
    """A delivered message; ``signed`` by the test producer key unless told otherwise."""
    reply = f"$JS.ACK.AUDIT.audit-writer.1.{seq}.{seq}.1700000000000000000.0"
    headers = {SIGNATURE_HEADER: sign(data)} if signed else None
    return Msg(
        FakeClient(log),  # type: ignore[arg-type]
        subject="audit.events.account.update",
        reply=reply,
        data=data,
        headers=headers,
    )


class FakeSource:
    """Hands out the given batches, then nothing; tracks held messages like the Puller."""

    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches = batches
        self.held: dict[str, Msg] = {}

    async def fetch(self, batch: int, wait: float) -> list[Msg]:
        msgs = self.batches.pop(0) if self.batches else []
        self.held.update({m.reply: m for m in msgs})
        return msgs

    async def drain(self) -> list[Msg]:
        return []

    def release(self, msgs: list[Msg]) -> None:
        for m in msgs:
            self.held.pop(m.reply, None)


class FakeWriter:
    """Commits (logs "commit") unless told to fail; rejects rows whose resource id says so."""

    def __init__(self, log: Log, outages: int = 0) -> None:
        self.log, self.outages = log, outages

    async def write(self, rows: list[tuple[Any, ...]]) -> WriteResult:
        if self.outages:
            self.outages -= 1
            self.log("write_failed")
            raise psycopg.OperationalError("connection refused")
        resource, seq = COLUMNS.index("resource_id"), COLUMNS.index("stream_seq")
        rejected = [(i, "22021 bad row") for i, r in enumerate(rows) if r[resource] == "reject-me"]
        self.log("commit", [r[seq] for i, r in enumerate(rows) if i not in dict(rejected)])
        return WriteResult(inserted=len(rows) - len(rejected), rejected=rejected)

    async def close(self) -> None:
        pass


class FakeJetStream:
    def __init__(self, log: Log) -> None:
        self.log = log

    async def publish(self, subject: str, payload: bytes = b"", **kw: Any) -> PubAck:
        self.log("dead_letter", (subject, kw["headers"]["Audit-Dlq-Reason"]))
        return PubAck(stream="AUDIT_DLQ", seq=1, duplicate=False)

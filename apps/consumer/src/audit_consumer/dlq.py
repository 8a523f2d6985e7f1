"""``audit-dlq``: read the dead-letter stream, and replay chosen letters once their cause is
fixed (a producer's key added to ``AUDIT_EVENT_KEYS``, a database constraint relaxed, …).

``list`` shows each letter with its kind and reason, ``show SEQ`` one letter whole, ``replay
SEQ…`` publishes each letter's original bytes and headers (its producer's signature included)
back on its original subject, so it passes through exactly the consumers' checks again: a
letter that is still bad is dead-lettered again, with its reason.

Every replay is itself on the record, before it happens: an ``audit.dlq.replay`` event naming
the operator (``--actor``), signed with this tool's own event key, published under its own
broker identity (``audit-dlq``: it may read the dead-letter stream and publish events, nothing
else; it cannot delete a letter). Nothing is doubled by replaying: the replay's
``Nats-Msg-Id`` is ``replay-<dlq seq>``, so JetStream drops a second replay of the same letter
within the duplicate window, and after it the consumer's ``ON CONFLICT (id) DO NOTHING`` does.
Exit codes: 0 done, 1 a letter could not be replayed, 2 bad usage or broker unreachable.
"""

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from audit_consumer.deadletter import KIND_HEADER, REASON_HEADER, SUBJECT_HEADER
from audit_events import AuditEvent, StreamNames, uuid7
from audit_events.authorship import EventKeys, EventKeySettings, signed
from audit_events.broker import DLQ, BrokerSettings


class Settings(BrokerSettings, EventKeySettings):
    """``NATS_URL``, ``AUDIT_NATS_PASSWORD`` (identity ``audit-dlq``), ``AUDIT_EVENT_KEYS``
    (this tool's key, which signs the record of each replay), the stream names."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    names: StreamNames = Field(default_factory=StreamNames)


def letter(msg: RawStreamMsg) -> dict[str, Any]:
    """One dead letter as shown: where it came from, why it is here, and its event's id."""
    headers = msg.headers or {}
    try:
        event_id = orjson.loads(msg.data or b"").get("id")
    except (orjson.JSONDecodeError, AttributeError):
        event_id = None
    return {
        "seq": msg.seq,
        "time": msg.time.isoformat() if msg.time else None,
        "kind": headers.get(KIND_HEADER),
        "subject": headers.get(SUBJECT_HEADER),
        "reason": headers.get(REASON_HEADER),
        "event_id": event_id,
    }


async def letters(js: Any, names: StreamNames, kind: str | None, limit: int) -> list[RawStreamMsg]:
    """The newest ``limit`` dead letters (of ``kind``), oldest first."""
    info = await js.stream_info(names.dlq_stream)
    found: list[RawStreamMsg] = []
    seq = info.state.last_seq
    while seq >= max(info.state.first_seq, 1) and len(found) < limit:
        try:
            msg = await js.get_msg(names.dlq_stream, seq)
        except NotFoundError:  # a gap (limits removed it)
            seq -= 1
            continue
        if kind is None or (msg.headers or {}).get(KIND_HEADER) == kind:
            found.append(msg)
        seq -= 1
    return found[::-1]


def replay_record(actor: str, msg: RawStreamMsg) -> AuditEvent:
    """The record of replaying one letter (who, which letter, why it was dead)."""
    shown = letter(msg)
    return AuditEvent.model_validate(
        {
            "id": uuid7(),
            "occurred_at": datetime.now(UTC),
            "actor_type": "operator",
            "actor_id": actor,
            "action": "audit.dlq.replay",
            "resource_type": "dead_letter",
            "resource_id": str(msg.seq),
            "outcome": "success",
            "metadata": {k: shown[k] for k in ("kind", "subject", "reason", "event_id")},
        }
    )


async def replay(js: Any, settings: Settings, keys: EventKeys, actor: str, seq: int) -> str:
    """Record, then replay, one letter; what happened, for the operator."""
    names = settings.names
    msg = await js.get_msg(names.dlq_stream, seq)
    headers = dict(msg.headers or {})
    subject = headers.get(SUBJECT_HEADER)
    if not subject or not subject.startswith(names.events_subjects.removesuffix(">")):
        raise ValueError(f"letter {seq} has no event subject to return to")
    record, record_headers = signed(replay_record(actor, msg), keys)
    await js.publish(
        names.event_subject("audit.dlq.replay"), record, stream=names.stream, headers=record_headers
    )
    original = {k: v for k, v in headers.items() if not k.startswith("Audit-Dlq-")}
    original["Nats-Msg-Id"] = f"replay-{names.dlq_stream}-{seq}"
    ack = await js.publish(subject, msg.data or b"", stream=names.stream, headers=original)
    if ack.duplicate:
        return f"letter {seq}: already replayed (stream seq {ack.seq})"
    return f"letter {seq}: replayed as stream seq {ack.seq}"


async def run(args: argparse.Namespace, settings: Settings) -> int:
    nc = await nats.connect(**settings.connect_options(DLQ), connect_timeout=5)
    try:
        js = nc.jetstream()
        if args.command == "list":
            found = await letters(js, settings.names, args.kind, args.limit)
            if not args.json:
                print(f"{'SEQ':>8}  {'TIME':<32}  {'KIND':<9}  {'EVENT ID':<36}  REASON")
            for msg in found:
                shown = letter(msg)
                if args.json:
                    print(json.dumps(shown))
                else:
                    print(
                        f"{shown['seq']:>8}  {shown['time'] or '-':<32}  {shown['kind'] or '?':<9}"
                        f"  {shown['event_id'] or '-':<36}  {shown['reason']}"
                    )
            if not found and not args.json:
                print(f"(no dead letters in {settings.names.dlq_stream})")
        elif args.command == "show":
            msg = await js.get_msg(settings.names.dlq_stream, args.seq)
            data = msg.data or b""
            try:
                body: Any = json.loads(data)
            except ValueError:
                body = data.decode(errors="replace")
            print(json.dumps({**letter(msg), "headers": msg.headers, "data": body}, indent=2))
        else:
            failed, keys = 0, settings.keys
            for seq in args.seq:
                try:
                    print(await replay(js, settings, keys, args.actor, seq))
                except (NotFoundError, ValueError) as exc:
                    print(f"letter {seq}: not replayed: {exc or 'no such letter'}", file=sys.stderr)
                    failed += 1
            return 1 if failed else 0
        return 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit-dlq", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the newest dead letters, with their reasons")
    listing.add_argument("--kind", choices=["invalid", "rejected", "signature"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per line (none when empty)"
    )
    show = commands.add_parser("show", help="one dead letter whole: headers and body")
    show.add_argument("seq", type=int)
    again = commands.add_parser("replay", help="publish letters again, through every check")
    again.add_argument("seq", type=int, nargs="+")
    again.add_argument("--actor", help="who replays (recorded; default: $USER)")
    args = parser.parse_args(argv)
    if args.command == "replay" and not args.actor:
        # Containers often run as a user with no name: then it must be said.
        args.actor = os.environ.get("USER") or os.environ.get("LOGNAME")
        if not args.actor:
            parser.error("say who replays: --actor NAME (it is recorded)")
    try:
        settings = Settings()
        if args.command == "replay":
            settings.keys  # noqa: B018 - every replay is recorded, signed: no key, no start
        sys.exit(asyncio.run(run(args, settings)))
    except Exception as exc:
        print(f"audit-dlq: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)

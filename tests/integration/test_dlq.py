"""``audit-dlq`` against a real consumer process, NATS and PostgreSQL: a letter signed with a key
the consumers did not hold yet is listed with its reason, replayed after the key is added —
through the same checks, recorded first, stored once however often it is replayed — and a
letter that is still bad goes back to the dead-letter stream."""

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import nats

from audit_consumer.settings import Settings
from audit_events.authorship import REPLAYS, SIGNATURE_HEADER, EventKeys, bound, key_id, signed
from audit_events.broker import API, DLQ, inbox_prefix
from tests.env import BIN, BROKER_PASSWORDS, EVENT_KEY, service_env, without_credentials
from tests.helpers import count_rows, make_event, wait_for
from tests.processes import consumer

NEW_PRODUCER_KEY = secrets.token_urlsafe(32)  # a producer whose key the consumers lack at first
DLQ_KEY = secrets.token_urlsafe(32)  # audit-dlq's own key: it signs the record of each replay


def dlq(streams: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(
        NATS_URL=without_credentials(streams.nats_url),
        AUDIT_NATS_PASSWORD=BROKER_PASSWORDS[DLQ],
        AUDIT_EVENT_KEYS=DLQ_KEY,
    )
    return subprocess.run(
        [str(BIN / "audit-dlq"), *args], env=env, capture_output=True, text=True, timeout=60
    )


async def dead_letters(streams: Settings) -> int:
    nc = await nats.connect(streams.nats_url)
    try:
        return int((await nc.jetstream().stream_info(streams.names.dlq_stream)).state.messages)
    finally:
        await nc.close()


async def test_list_show_and_replay_a_letter_after_its_cause_is_fixed(
    streams: Settings, db: Any, tmp_path: Path
) -> None:
    names = streams.names
    url = without_credentials(streams.nats_url)
    producer = await nats.connect(
        url, user=API, password=BROKER_PASSWORDS[API], inbox_prefix=inbox_prefix(API)
    )
    new = make_event(actor_id="from-the-new-producer")
    data, headers = signed(new, EventKeys([NEW_PRODUCER_KEY]))
    await producer.jetstream().publish(names.event_subject(new.action), data, headers=headers)
    garbage = b"not json at all"  # signed by a known key, but not an event
    signature = {SIGNATURE_HEADER: EventKeys([EVENT_KEY]).sign(garbage)}
    await producer.jetstream().publish(
        names.event_subject("account.update"), garbage, headers=signature
    )
    await producer.close()

    empty = dlq(streams, "list").stdout.splitlines()
    assert empty[0].split() == ["SEQ", "TIME", "KIND", "EVENT", "ID", "REASON"]
    assert empty[1] == f"(no dead letters in {names.dlq_stream})"
    before = consumer(service_env(streams, AUDIT_EVENT_KEYS=EVENT_KEY), tmp_path, 1).start()
    try:
        await wait_for(lambda: _is(dead_letters(streams), 2))
    finally:
        before.stop()
    assert await count_rows(db) == 0

    listed = dlq(streams, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(x["seq"], x["kind"], x["event_id"]) for x in letters] == [
        (1, "signature", str(new.id)),
        (2, "invalid", None),
    ]
    assert letters[0]["reason"].startswith("bad signature: unknown key")
    table = dlq(streams, "list").stdout.splitlines()
    assert table[0].startswith("     SEQ")  # a header, then one line per letter
    assert len(table) == 3
    shown = json.loads(dlq(streams, "show", "1").stdout)
    assert shown["data"]["actor_id"] == "from-the-new-producer"
    assert shown["headers"]["Audit-Dlq-Subject"] == names.event_subject(new.action)

    # the fix: consumers now hold the new producer's key (and audit-dlq's, for its records)
    keys = ",".join([EVENT_KEY, NEW_PRODUCER_KEY, bound(DLQ_KEY, REPLAYS)])
    after = consumer(service_env(streams, AUDIT_EVENT_KEYS=keys), tmp_path, 2).start()
    try:
        replayed = dlq(streams, "replay", "1", "2", "--actor", "ops-oncall")
        assert replayed.returncode == 0, replayed.stderr
        assert "letter 1: replayed" in replayed.stdout  # (letter 2 will come back: not an event)
        missing = dlq(streams, "replay", "99", "--actor", "ops-oncall")
        assert missing.returncode == 1
        assert "letter 99: not replayed" in missing.stderr
        again = dlq(streams, "replay", "1", "--actor", "ops-oncall")
        assert "already replayed" in again.stdout
        await wait_for(lambda: _rows_are(db, 4))  # the event, and three replay records
        await wait_for(lambda: _is(dead_letters(streams), 3))
    finally:
        after.stop()

    account = "SELECT id, actor_id FROM audit_events WHERE action = 'account.update'"
    stored = await (await db.execute(account)).fetchall()
    assert [(str(i), a) for i, a in stored] == [(str(new.id), "from-the-new-producer")]
    records = await (
        await db.execute(
            "SELECT actor_type, actor_id, resource_id, metadata->>'kind' FROM audit_events"
            " WHERE action = 'audit.dlq.replay' ORDER BY stream_seq"
        )
    ).fetchall()
    assert records == [
        ("operator", "ops-oncall", "1", "signature"),
        ("operator", "ops-oncall", "2", "invalid"),
        ("operator", "ops-oncall", "1", "signature"),
    ]
    relisted = [json.loads(x) for x in dlq(streams, "list", "--json").stdout.splitlines()]
    assert relisted[-1]["kind"] == "invalid"  # letter 2, dead again, with its reason
    assert relisted[-1]["reason"] == letters[1]["reason"]


async def test_audit_dlqs_password_and_key_cannot_record_an_account_event(
    streams: Settings, db: Any, tmp_path: Path
) -> None:
    """Its identity may publish on every event subject (replays), and its key signs: but the
    consumers take that key only for the records of replays (``authorship.bound``)."""
    names = streams.names
    operator = await nats.connect(
        without_credentials(streams.nats_url),
        user=DLQ,
        password=BROKER_PASSWORDS[DLQ],
        inbox_prefix=inbox_prefix(DLQ),
    )
    js, keys = operator.jetstream(), EventKeys([DLQ_KEY])
    forged = make_event(actor_id="mallory")  # account.update
    record = make_event(action="audit.dlq.replay", actor_type="operator", resource_id="1")
    for event in (forged, record):
        data, headers = signed(event, keys)
        await js.publish(names.event_subject(event.action), data, headers=headers)
    await operator.close()

    checks = ",".join([EVENT_KEY, bound(DLQ_KEY, REPLAYS)])
    worker = consumer(service_env(streams, AUDIT_EVENT_KEYS=checks), tmp_path, 1).start()
    try:
        await wait_for(lambda: _is(dead_letters(streams), 1))
        await wait_for(lambda: _rows_are(db, 1))
    finally:
        worker.stop()
    stored = await (await db.execute("SELECT id FROM audit_events")).fetchall()
    assert [str(i) for (i,) in stored] == [str(record.id)]
    (letter,) = [json.loads(x) for x in dlq(streams, "list", "--json").stdout.splitlines()]
    assert (letter["kind"], letter["event_id"]) == ("signature", str(forged.id))
    why = f"key {key_id(DLQ_KEY)} may not sign account.update"
    assert letter["reason"] == f"bad signature: {why}"


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _rows_are(db: Any, n: int) -> bool:
    got = await count_rows(db)
    assert got <= n, f"{got} rows: a replay was stored twice"
    return got == n


def test_a_replay_must_name_who_replays_where_the_user_has_no_name(streams: Settings) -> None:
    """In a container the user often has no name: replaying then asks for --actor."""
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME")}
    done = subprocess.run(
        [str(BIN / "audit-dlq"), "replay", "1"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "--actor" in done.stderr
    listed = subprocess.run([str(BIN / "audit-dlq"), "--help"], env=env, capture_output=True)
    assert listed.returncode == 0

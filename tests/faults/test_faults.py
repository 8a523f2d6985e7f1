"""Break things for real — kill consumers, stop PostgreSQL and NATS, feed poison — and check
that every event the API acknowledged is stored exactly once.

Each scenario prints one summary line; `make test-faults` prints them all as a table at the end
(docs/reliability.md holds one run)."""

import asyncio
import json
import signal
import time

import nats
import psycopg
import pytest

from audit_devservers import NatsServer
from audit_events import MAX_EVENT_BYTES, encode
from audit_events.authorship import SIGNATURE_HEADER, EventKeys
from tests.env import EVENT_KEY
from tests.faults.harness import Load, health, verify, wait_stored
from tests.faults.rig import Rig
from tests.helpers import (
    make_event,
    published,
    rows_at_least,
    sign,
    stored_ids,
    unchecked_event,
    wait_for,
)


async def test_consumer_sigkilled_mid_batch(rig: Rig, db_url: str) -> None:
    rig.start(consumers=3)
    load = Load(rig.url, concurrency=16, total=2000).start()
    await wait_for(lambda: rows_at_least(db_url, 300))
    victim = rig.consumers[0]
    victim.signal(signal.SIGKILL)
    assert await asyncio.to_thread(victim.wait) == -signal.SIGKILL
    victim.start()
    fault_end_acks = list(load.acknowledged)
    recovery = await wait_stored(db_url, fault_end_acks)
    await load.done()
    await verify("consumer SIGKILL mid-batch", db_url, load, recovery_s=recovery)


async def test_postgres_down_under_load(rig: Rig, db_url: str) -> None:
    rig.start(consumers=2)
    load = Load(rig.url, concurrency=8).start()
    await wait_for(lambda: rows_at_least(db_url, 100))
    rig.pg.stop()
    saw_unready: set[str] = set()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # "several seconds" down, probing all along
        for c in rig.consumers:
            assert c.probe("/healthz") == 200, "liveness must not depend on PostgreSQL"
            if c.probe("/readyz") == 503:
                saw_unready.add(c.name)
        await asyncio.sleep(0.2)
    assert saw_unready == {c.name for c in rig.consumers}
    rig.pg.start()
    restarted = time.monotonic()
    for c in rig.consumers:
        await asyncio.to_thread(c.wait_ready, 60)
    ready_after = time.monotonic() - restarted
    await load.stop()
    assert all(c.proc is not None and c.proc.poll() is None for c in rig.consumers)
    recovery = ready_after + await wait_stored(db_url, load.acknowledged)
    dead = sum(health(c)["dead_lettered"] for c in rig.consumers)
    assert dead == 0
    await verify("PostgreSQL stopped 6 s", db_url, load, recovery_s=recovery, dlq=dead)


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_nats_down_under_load(rig: Rig, db_url: str, crash: bool) -> None:
    """Stopped, or SIGKILLed as a crash would (no flush: what was acked must already be on
    disk, and a trim or an ack the crash loses only means a redelivery the key absorbs)."""
    rig.start(consumers=2)
    load = Load(rig.url, concurrency=8).start()
    await wait_for(lambda: rows_at_least(db_url, 100))
    if crash:
        assert isinstance(rig.nats, NatsServer)  # this rig's one node
        rig.nats.kill()
    else:
        rig.nats.stop()  # file storage stays on disk
    down_mark = load.answered
    await asyncio.sleep(5)
    during = load.since(down_mark)
    assert during[503] > 0, during
    assert set(during) <= {200, 503}, during  # 200s: acks that arrived just before the stop
    rig.nats.start()
    restarted = time.monotonic()
    up_mark = load.answered
    await wait_for(lambda: load.since(up_mark)[200] > 0)
    api_back = time.monotonic() - restarted
    await load.stop()
    for c in rig.consumers:
        await asyncio.to_thread(c.wait_ready, 60)
    recovery = await wait_stored(db_url, load.acknowledged) + (time.monotonic() - restarted)
    assert all(c.proc is not None and c.proc.poll() is None for c in rig.consumers)
    await verify(
        "NATS SIGKILL, down 5 s" if crash else "NATS stopped 5 s",
        db_url,
        load,
        recovery_s=recovery,
        api_503=load.statuses[503],
        api_back_s=round(api_back, 1),
    )


async def test_sigterm_every_consumer_during_load(rig: Rig, db_url: str) -> None:
    grace = 20
    rig.start(consumers=3, AUDIT_SHUTDOWN_SECONDS=str(grace))
    load = Load(rig.url, concurrency=8, total=1500).start()
    await wait_for(lambda: rows_at_least(db_url, 200))
    for c in rig.consumers:
        c.signal(signal.SIGTERM)
    codes = [await asyncio.to_thread(c.wait, grace + 5) for c in rig.consumers]
    assert codes == [0, 0, 0]
    await load.done()
    # What they stored before exiting they acked, and nothing else: the durable still owes
    # exactly the events not yet stored (undelivered, or delivered and never acked).
    nc = await nats.connect(rig.settings.nats_url)
    names = rig.settings.names
    info = await nc.jetstream().consumer_info(names.stream, names.durable)
    await nc.close()
    owed = info.num_pending + info.num_ack_pending
    assert owed == len(load.acknowledged) - len(await stored_ids(db_url))
    restarted = time.monotonic()
    for c in rig.consumers:
        c.start()
    await wait_stored(db_url, load.acknowledged)
    await verify(
        "SIGTERM all consumers",
        db_url,
        load,
        recovery_s=time.monotonic() - restarted,
        exit_codes=codes,
    )


async def test_poison_goes_to_the_dlq_and_the_rest_flow(rig: Rig, db_url: str) -> None:
    rig.start(consumers=2)
    nc = await nats.connect(rig.settings.nats_url)
    js = nc.jetstream()
    good = [make_event(resource_id=f"good-{i}") for i in range(20)]
    forged = encode(make_event(actor_id="mallory"))
    poison = {  # reason prefix -> (payload, its Audit-Signature)
        "not JSON": b"\x00\x01 definitely not json",
        "schema_version": json.dumps({"schema_version": 7, "id": "x"}).encode(),
        "event is": b'{"pad": "' + b"x" * (MAX_EVENT_BYTES + 10) + b'"}',  # oversize
        "metadata": encode(unchecked_event(metadata={"note": "\u0000"})),  # no NUL in jsonb
        "bad signature: unsigned": encode(make_event(actor_id="nobody")),
        "bad signature: signature does not match": forged,
    }
    signatures = {payload: sign(payload) for payload in poison.values()}
    signatures[poison["bad signature: unsigned"]] = ""
    signatures[forged] = sign(encode(make_event()))  # a real signature, of another event
    payloads = [encode(e) for e in good]
    for i, bad in enumerate(poison.values()):
        payloads.insert(3 + i * 4, bad)
    for payload in payloads:
        signature = signatures[payload] if payload in signatures else sign(payload)
        signed = {SIGNATURE_HEADER: signature} if signature else None
        await js.publish(
            rig.settings.names.event_subject("account.update"), payload, headers=signed
        )
    ids = [str(e.id) for e in good]
    await wait_stored(db_url, ids)
    dlq = rig.settings.names.dlq_stream
    await wait_for(lambda: _messages(js, dlq, len(poison)))
    letters = [await js.get_msg(dlq, seq) for seq in range(1, len(poison) + 1)]
    headers = {m.data: m.headers or {} for m in letters}
    for prefix, payload in poison.items():
        reason = headers[payload].get("Audit-Dlq-Reason", "")
        assert reason.startswith(prefix), (prefix, reason)
        kind = "signature" if prefix.startswith("bad signature") else "invalid"
        assert headers[payload]["Audit-Dlq-Kind"] == kind

    async def nothing_left() -> bool:  # poison is acked once it is in the DLQ
        info = await js.consumer_info(rig.settings.names.stream, rig.settings.names.durable)
        return bool(info.num_pending + info.num_ack_pending == 0)

    await wait_for(nothing_left)
    await nc.close()
    assert sorted(await stored_ids(db_url)) == sorted(ids)
    await verify(
        "poison published to stream",
        db_url,
        None,
        sent=len(payloads),
        acknowledged=ids,
        dead_lettered=len(letters),
    )


async def _messages(js: object, stream: str, n: int) -> bool:
    return int((await js.stream_info(stream)).state.messages) == n  # type: ignore[attr-defined]


async def test_duplicate_publish_and_redelivery_after_ack_wait(rig: Rig, db_url: str) -> None:
    nc = await nats.connect(rig.settings.nats_url)
    js = nc.jetstream()
    subject = rig.settings.names.event_subject("account.update")
    twice = make_event()
    for msg_id in ("dup", "dup"):  # JetStream drops the copy
        await js.publish(subject, **published(twice, msg_id))
    await js.publish(subject, **published(twice, "dup-2"))  # the primary key drops it
    batch = [make_event() for _ in range(50)]
    for e in batch:
        await js.publish(subject, **published(e))

    # A worker that stores a batch and dies before acking: fetch, write, never ack.
    sub = await js.pull_subscribe_bind(rig.settings.names.durable, rig.settings.names.stream)
    msgs = await sub.fetch(100, timeout=5)
    assert len(msgs) == 52
    from audit_consumer.batch import Checks, decode_batch
    from audit_consumer.writer import BatchWriter

    stored = decode_batch(msgs, Checks(EventKeys([EVENT_KEY])), None)
    writer = await BatchWriter.connect(rig.pg.url)
    first = await writer.write(stored.rows)
    await writer.close()
    await nc.close()  # gone without an ack: JetStream redelivers after ack_wait
    assert first.inserted == 51  # twice + 50; the second copy of `twice` was a duplicate

    rig.start(consumers=2)
    ids = [str(twice.id)] + [str(e.id) for e in batch]
    await wait_for(lambda: _all_acked(rig), timeout=60)
    duplicates_seen = sum(health(c)["duplicates"] for c in rig.consumers)
    assert duplicates_seen == 52  # every redelivered message was already stored
    assert sorted(await stored_ids(db_url)) == sorted(ids)
    await verify(
        "duplicate publish + redelivery",
        db_url,
        None,
        sent=53,
        acknowledged=ids,
        redelivered=len(msgs),
        absorbed=duplicates_seen + 1,
    )


async def _all_acked(rig: Rig) -> bool:
    nc = await nats.connect(rig.settings.nats_url)
    try:
        info = await nc.jetstream().consumer_info(
            rig.settings.names.stream, rig.settings.names.durable
        )
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)
    finally:
        await nc.close()


async def test_three_consumers_share_the_durable(rig: Rig, db_url: str) -> None:
    rig.start(consumers=3, AUDIT_BATCH_SIZE="50")
    load = Load(rig.url, concurrency=16, total=3000).start()
    await load.done()
    await wait_stored(db_url, load.acknowledged)
    await wait_for(lambda: _all_acked(rig))
    stored_by = [health(c)["stored"] for c in rig.consumers]
    assert all(n > 0 for n in stored_by), stored_by
    assert sum(stored_by) == len(load.acknowledged)  # no overlap
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT stream_seq), max(stream_seq) - min(stream_seq) + 1"
            " FROM audit_events"
        )
        count, distinct, span = await cur.fetchone()  # type: ignore[misc]
    assert count == distinct == span == 3000  # no gap
    await verify("3 consumers share durable", db_url, load, stored_by=stored_by)

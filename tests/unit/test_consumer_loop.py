"""The consumer's decisions, driven with a fake pull source, a fake writer and a fake JetStream
(the real-server versions are in tests/integration and tests/faults): dead-letter poison and
store its neighbours, hold everything in hand through an outage, ack only after the commit."""

from typing import Any

import pytest
from nats.aio.msg import Msg

from audit_consumer.consumer import Consumer
from audit_consumer.settings import Settings
from audit_consumer.writer import WriterPool
from audit_events import encode
from tests.fakes import FakeJetStream, FakeSource, FakeWriter, Log, message
from tests.helpers import make_event


def consumer_with(writer: FakeWriter, **settings: Any) -> Consumer:
    async def connect() -> Any:
        return writer

    config = Settings(AUDIT_BACKOFF_MAX_SECONDS=0.01, AUDIT_DB_CONNECTIONS=1, **settings)
    return Consumer(config, WriterPool(1, connect))


def good(log: Log, seq: int) -> Msg:
    return message(log, seq, encode(make_event(resource_id=f"acc-{seq}")))


async def test_poison_is_dead_lettered_its_neighbours_stored_and_all_acked_after_commit() -> None:
    log = Log()
    batch = [
        good(log, 1),
        message(log, 2, b"{not json"),
        good(log, 3),
        message(log, 4, encode(make_event(resource_id="reject-me"))),
    ]
    consumer = consumer_with(FakeWriter(log))
    await consumer.consume(FakeSource([batch]), FakeJetStream(log), max_batches=1)

    assert log.of("commit") == [[1, 3]]
    dead = log.of("dead_letter")
    assert [subject for subject, _ in dead] == ["audit.dlq.invalid", "audit.dlq.rejected"]
    assert dead[0][1].startswith("not JSON")
    assert sorted(log.of("ack")) == [1, 2, 3, 4]  # poison too, once it is in the DLQ
    assert log.first("commit") < log.first("dead_letter") < log.first("ack")
    assert (consumer.stats.stored, consumer.stats.dead_lettered) == (2, 2)


async def test_an_outage_holds_every_message_in_hand_and_acks_only_after_the_commit() -> None:
    log = Log()
    first, second = [good(log, 1), good(log, 2)], [good(log, 3)]
    consumer = consumer_with(FakeWriter(log, outages=3))
    await consumer.consume(FakeSource([first, second]), FakeJetStream(log), max_batches=2)

    assert len(log.of("write_failed")) == 3
    assert log.of("dead_letter") == []  # an outage never dead-letters anything
    assert sorted(log.of("ack")) == [1, 2, 3]
    assert max(i for i, (w, _) in enumerate(log.entries) if w == "write_failed") < log.first("ack")
    assert log.first("commit") < log.first("ack")
    # While waiting, everything delivered to this worker was kept ours: the batch being
    # written and the one fetched behind it.
    assert {1, 2, 3} <= set(log.of("in_progress"))


async def test_stopping_during_an_outage_hands_the_batch_back_unacked() -> None:
    log = Log()
    consumer = consumer_with(FakeWriter(log, outages=10**6))
    consumer.stop()
    await consumer.consume(FakeSource([[good(log, 1), good(log, 2)]]), FakeJetStream(log))

    assert log.of("commit") == []
    assert log.of("ack") == []
    assert sorted(log.of("nak")) == [1, 2]  # redelivered at once, to whoever is still up


@pytest.mark.parametrize("batches", [1, 3])
async def test_bounded_mode_stops_after_max_batches(batches: int) -> None:
    log = Log()
    source = FakeSource([[good(log, i)] for i in range(1, 6)])
    await consumer_with(FakeWriter(log)).consume(source, FakeJetStream(log), max_batches=batches)
    assert sorted(log.of("ack")) == list(range(1, batches + 1))
    assert source.held == {}  # every settled message released

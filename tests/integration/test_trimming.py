"""``AUDIT`` is trimmed below the durable's ack floor, never above it: a real consumer process
empties the stream after storing everything, an event delivered and not acked survives every
trim (with the acked ones after it), and a work-queue stream of an earlier version is kept and
keeps working."""

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy

from audit_consumer.jetstream import provision, stream_configs
from audit_consumer.puller import Puller
from audit_consumer.settings import Settings
from audit_consumer.trimming import Trimmer
from tests.env import service_env
from tests.helpers import count_rows, publish_events, wait_for
from tests.processes import consumer


async def stream_state(nc: NATS, settings: Settings) -> tuple[int, int]:
    """(first sequence, messages) of ``AUDIT``."""
    state = (await nc.jetstream().stream_info(settings.names.stream)).state
    return state.first_seq, state.messages


async def test_a_consumer_stores_everything_then_the_stream_is_empty(
    streams: Settings, nc: NATS, db: Any, tmp_path: Path
) -> None:
    n = 300
    await publish_events(nc, streams.names, n, "t-")
    worker = consumer(service_env(streams), tmp_path, 0).start()  # its own identity purges
    try:
        await wait_for(lambda: _trimmed_to(nc, streams, n + 1), timeout=60)
    finally:
        worker.stop()
    cur = await db.execute("SELECT count(*), count(DISTINCT id) FROM audit_events")
    assert await cur.fetchone() == (n, n)


async def _trimmed_to(nc: NATS, settings: Settings, first: int) -> bool:
    return await stream_state(nc, settings) == (first, 0)


async def floor_at(js: Any, settings: Settings, seq: int) -> Any:
    """The durable's info once its ack floor is ``seq`` (it only moves forward)."""
    names = settings.names
    infos = []

    async def reached() -> bool:
        infos.append(await js.consumer_info(names.stream, names.durable))
        return bool(infos[-1].ack_floor.stream_seq == seq)

    await wait_for(reached, timeout=30)
    return infos[-1]


async def test_nothing_from_an_unacked_event_on_is_trimmed(streams: Settings, nc: NATS) -> None:
    names = streams.names
    await publish_events(nc, streams.names, 10, "t-")
    js = nc.jetstream()
    trimmer = Trimmer(js, names.stream)
    puller = Puller(nc, names.stream, names.durable)
    await puller.start()
    msgs = await puller.fetch(5, 5)
    assert len(msgs) == 5
    for i in (0, 1, 3, 4):  # stream seqs 1, 2, 4, 5 acked; 3 is still being stored
        await msgs[i].ack()
    stale = await floor_at(js, streams, 2)  # the server applies acks in its own time

    await trimmer.trim(stale)
    assert await stream_state(nc, streams) == (3, 8)  # 3 and the acked 4, 5 wait for the floor
    assert (await js.get_msg(names.stream, 3)).data == msgs[2].data

    await msgs[2].ack()
    await trimmer.trim(await floor_at(js, streams, 5))
    assert await stream_state(nc, streams) == (6, 5)
    await Trimmer(js, names.stream).trim(stale)  # another consumer's older reading: no effect
    assert await stream_state(nc, streams) == (6, 5)
    await puller.stop()


async def test_a_work_queue_of_an_earlier_version_is_kept_and_still_drains(
    streams: Settings, nc: NATS, db: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await js.delete_stream(streams.names.stream)
    audit = stream_configs(streams)[0]
    await js.add_stream(replace(audit, retention=RetentionPolicy.WORK_QUEUE, deny_purge=True))
    with caplog.at_level(logging.WARNING, "audit.setup"):
        await provision(streams)  # JetStream cannot make it a trimmed stream: setup must not fail
    assert "is a work queue (made by an earlier version): kept" in caplog.text
    config = (await js.stream_info(streams.names.stream)).config
    assert (config.retention, config.deny_purge) == (RetentionPolicy.WORK_QUEUE, True)

    await publish_events(nc, streams.names, 50, "t-")
    worker = consumer(service_env(streams), tmp_path, 0).start()
    try:
        await wait_for(lambda: _trimmed_to(nc, streams, 51), timeout=60)  # its acks removed them
    finally:
        worker.stop()
    assert await count_rows(db) == 50
    assert "could not trim" not in worker.logs()

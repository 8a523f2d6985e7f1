"""The JetStream side of ``audit-setup``: the ``AUDIT`` and ``AUDIT_DLQ`` streams and the
durable ``audit-writer``, created, or updated in place when a setting this project owns drifted.

Idempotent: a second run compares and changes nothing (and says ``unchanged``). JetStream
refuses only changes it cannot make (such as the storage type); then setup fails with the
server's reason rather than guessing.
"""

import logging
from dataclasses import asdict, replace
from typing import Any

import nats
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from audit_consumer.retry import until_up
from audit_consumer.settings import Settings
from audit_events import MAX_EVENT_BYTES
from audit_events.broker import SETUP

log = logging.getLogger("audit.setup")


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The event stream and the dead-letter stream, as audit data needs them.

    ``AUDIT`` keeps every message until the consumers trim it (``trimming.py``): only below the
    durable's ack floor, i.e. after it is committed to PostgreSQL, so nothing leaves unstored;
    it has no age or count limit. (Not a work queue: that removes each acked message with its
    own fsync'd tombstone under ``sync_interval: always``, which cost a consumer 3/4 of its
    throughput on one node; one purge per second does the same work.) ``discard: new`` makes a
    full stream refuse publishes (the API answers 503) instead of dropping old events. The
    duplicate window turns a re-published ``Nats-Msg-Id`` into a no-op. ``deny_delete`` stops
    anyone from removing single events; only the consumer identity may purge (its ack alone
    could already remove an event from a work queue, so it gains no power).
    """
    names = settings.names
    return [
        StreamConfig(
            name=names.stream,
            description="Audit events awaiting storage in PostgreSQL",
            subjects=[names.events_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_bytes=settings.provision.stream_max_bytes,
            max_msg_size=2 * MAX_EVENT_BYTES,
            num_replicas=settings.provision.stream_replicas,
            duplicate_window=settings.provision.duplicate_window_seconds,
            deny_delete=True,
            deny_purge=False,
        ),
        StreamConfig(
            name=names.dlq_stream,
            description="Audit messages that can never be stored, with the reason in a header",
            subjects=[names.dlq_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_bytes=-1,  # unlimited, stated: the server reports -1 for "unset" and we compare
            num_replicas=settings.provision.stream_replicas,
            duplicate_window=settings.provision.duplicate_window_seconds,
            deny_delete=True,
        ),
    ]


def consumer_config(settings: Settings) -> ConsumerConfig:
    """The shared durable pull consumer. ``max_deliver=-1``: a message is never given up on
    because PostgreSQL was down; only the consumer's own verdict sends it to the DLQ."""
    names = settings.names
    return ConsumerConfig(
        name=names.durable,
        durable_name=names.durable,
        description="audit-consumer processes share this durable",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.provision.ack_wait_seconds,
        max_deliver=-1,
        max_ack_pending=settings.provision.max_ack_pending,
        filter_subject=names.events_subjects,
        num_replicas=0,  # inherit the stream's
    )


def drift(have: Any, want: Any) -> list[str]:
    """The fields ``want`` sets (not ``None``) that differ in ``have``; the rest we don't own.
    (``num_replicas=0`` on the durable means "the stream's", which the server reports as 0.)"""
    current = asdict(have)
    return [f for f, v in asdict(want).items() if v is not None and current.get(f) != v]


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> str:
    """Create the stream, or update it if any setting this project owns has drifted."""
    assert want.name is not None
    try:
        have = (await js.stream_info(want.name)).config
    except NotFoundError:
        await js.add_stream(want)
        return "created"
    if have.retention == RetentionPolicy.WORK_QUEUE != want.retention:
        # Made by an earlier version; JetStream cannot change a work queue's retention, and
        # the work queue stays correct (each ack removes its event), only slower.
        log.warning(
            "stream %s is a work queue (made by an earlier version): kept as it is; to get the "
            "trimmed stream, recreate it once drained (README, 'Upgrading')",
            want.name,
        )
        want = replace(want, retention=have.retention, deny_purge=have.deny_purge)
    if changed := drift(have, want):
        await js.update_stream(want)
        return f"updated ({', '.join(changed)})"
    return "unchanged"


async def ensure_durable(js: JetStreamContext, stream: str, want: ConsumerConfig) -> str:
    """Create the durable, or update it (CONSUMER.CREATE with a name is create-or-update on
    nats-server >= 2.9) if any setting this project owns has drifted."""
    assert want.name is not None
    try:
        have = (await js.consumer_info(stream, want.name)).config
    except NotFoundError:
        await js.add_consumer(stream, want)
        return "created"
    if changed := drift(have, want):
        await js.add_consumer(stream, want)
        return f"updated ({', '.join(changed)})"
    return "unchanged"


async def provision(settings: Settings) -> ConsumerInfo:
    """Streams ``AUDIT``, ``AUDIT_DLQ`` and the durable ``audit-writer``, created or updated;
    the durable as it now is."""
    nc = await until_up(
        "NATS",
        lambda: nats.connect(**settings.connect_options(SETUP), max_reconnect_attempts=1),
        settings.setup_wait_seconds,
    )
    try:
        js = nc.jetstream()
        for config in stream_configs(settings):
            log.info("stream %s: %s", config.name, await ensure_stream(js, config))
        names = settings.names
        state = await ensure_durable(js, names.stream, consumer_config(settings))
        log.info("durable %s on %s: %s", names.durable, names.stream, state)
        info: ConsumerInfo = await js.consumer_info(names.stream, names.durable)
        return info
    finally:
        await nc.close()

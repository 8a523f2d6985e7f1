"""The broker as an attacker with network access and a NATS client sees it, on a real
nats-server with the project's own authorization (audit_events.broker): no anonymous access,
and each identity refused everything but its job."""

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoServersError

from audit_consumer.puller import Puller
from audit_consumer.settings import Settings
from audit_devservers import NatsServer
from audit_events import StreamNames, encode
from audit_events.broker import (
    API,
    CONSUMER,
    DLQ,
    PASSWORD_VARS,
    QUERY,
    SETUP,
    authorization,
    inbox_prefix,
)
from tests.env import BROKER_PASSWORDS, ROOT, without_credentials
from tests.helpers import assert_admits_only_the_identities, make_event


@pytest.fixture
def server(nats_server: NatsServer | None) -> NatsServer:
    if nats_server is None:
        pytest.skip("NATS_URL points at your own server: its authorization is yours")
    return nats_server


@asynccontextmanager
async def connect_as(server: NatsServer, identity: str) -> AsyncIterator[tuple[NATS, list[str]]]:
    """A client logged in as ``identity``; the list collects the server's -ERR lines."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        server.url, user=identity, password=BROKER_PASSWORDS[identity],
        inbox_prefix=inbox_prefix(identity), error_cb=on_error, allow_reconnect=False,
    )  # fmt: skip
    try:
        yield nc, errors
    finally:
        await nc.close()


async def refused(
    errors: list[str], subject: str, action: Callable[[], object], kind: str = "publish"
) -> None:
    """``action`` gets no answer and the server reports a ``kind`` (publish, subscription)
    permissions violation on ``subject``."""
    try:
        result = action()
        if asyncio.iscoroutine(result):
            await result  # a request: the server drops it, so it times out
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        pass
    for _ in range(50):
        if any(f'violation for {kind} to "{subject.lower()}"' in e.lower() for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {subject}: {errors}")


async def request_refused(nc: NATS, errors: list[str], subject: str, payload: bytes = b"") -> None:
    """A request to ``subject`` goes unanswered, refused by the server's permissions."""
    await refused(errors, subject, partial(nc.request, subject, payload, timeout=0.5))


async def test_an_anonymous_client_gets_nothing(server: NatsServer) -> None:
    for credentials in ({}, {"user": API, "password": "wrong"}, {"user": "admin", "password": ""}):
        errors: list[str] = []

        async def on_error(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc))

        with pytest.raises((NoServersError, nats.errors.Error)):
            await asyncio.wait_for(nats.connect(
                server.url, allow_reconnect=False, connect_timeout=2, error_cb=on_error,
                **credentials,
            ), 10)  # fmt: skip
        assert any("Authorization Violation" in e for e in errors), errors


async def test_the_api_may_publish_events_and_nothing_else(
    server: NatsServer, streams: Settings, nc: NATS
) -> None:
    names = streams.names
    async with connect_as(server, API) as (api, errors):
        ack = await api.jetstream().publish(
            names.event_subject("account.read"), encode(make_event()), stream=names.stream
        )
        assert ack.seq >= 1  # its job
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.durable}"
        await request_refused(api, errors, pull, b'{"batch": 1}')
        await request_refused(api, errors, f"$JS.API.STREAM.DELETE.{names.stream}")
        await refused(errors, names.dlq_subject("x"), lambda: api.publish(names.dlq_subject("x")))
        await refused(
            errors, "audit.events.>", lambda: api.subscribe("audit.events.>"), "subscription"
        )
        other = f"{inbox_prefix(CONSUMER)}.>"  # another identity's replies
        await refused(errors, other, lambda: api.subscribe(other), "subscription")
    assert (await nc.jetstream().stream_info(names.stream)).state.messages == 1


async def test_the_query_service_may_record_reads_and_forge_no_account_event(
    server: NatsServer, streams: Settings, nc: NATS
) -> None:
    names = streams.names
    async with connect_as(server, QUERY) as (query, errors):
        ack = await query.jetstream().publish(
            names.event_subject("audit.query"), encode(make_event()), stream=names.stream
        )
        assert ack.seq >= 1  # its job: the record of a read
        account = names.event_subject("account.update")
        await refused(errors, account, lambda: query.publish(account, encode(make_event())))
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.durable}"
        await request_refused(query, errors, pull, b'{"batch": 1}')
        await refused(
            errors, "audit.events.>", lambda: query.subscribe("audit.events.>"), "subscription"
        )
    assert (await nc.jetstream().stream_info(names.stream)).state.messages == 1


async def test_the_consumer_may_pull_ack_trim_and_dead_letter_but_not_forge_or_delete(
    server: NatsServer, streams: Settings, nc: NATS
) -> None:
    names = streams.names
    await nc.jetstream().publish(names.event_subject("account.read"), encode(make_event()))
    async with connect_as(server, CONSUMER) as (consumer, errors):
        js = consumer.jetstream()
        puller = Puller(consumer, names.stream, names.durable)  # what audit-consumer pulls with
        await puller.start()
        (msg,) = await puller.fetch(1, 5)
        await msg.ack()  # its job
        await js.publish(names.dlq_subject("invalid"), b"x", stream=names.dlq_stream)
        forged = names.event_subject("account.delete")
        await refused(errors, forged, lambda: consumer.publish(forged, encode(make_event())))
        # It may purge AUDIT (trimming below the ack floor), nothing else.
        await request_refused(consumer, errors, f"$JS.API.STREAM.DELETE.{names.stream}")
        for verb in ("STREAM.DELETE", "STREAM.PURGE"):
            await request_refused(consumer, errors, f"$JS.API.{verb}.{names.dlq_stream}")
        delete = f"$JS.API.CONSUMER.DELETE.{names.stream}.{names.durable}"
        await request_refused(consumer, errors, delete)
        create = f"$JS.API.CONSUMER.CREATE.{names.stream}.thief"
        await request_refused(consumer, errors, create, b"{}")
    info = await nc.jetstream().consumer_info(names.stream, names.durable)
    assert info.num_pending == 0  # the acked event left; the durable is still there


async def test_setup_may_manage_but_not_delete_or_purge(
    server: NatsServer, streams: Settings, nc: NATS
) -> None:
    names = streams.names
    async with connect_as(server, SETUP) as (setup, errors):
        js = setup.jetstream()
        assert (await js.stream_info(names.stream)).config.name == names.stream  # its job
        for verb in ("STREAM.DELETE", "STREAM.PURGE"):
            await request_refused(setup, errors, f"$JS.API.{verb}.{names.stream}")
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.durable}"
        await request_refused(setup, errors, pull, b'{"batch": 1}')
        await refused(errors, "audit.events.x", lambda: setup.publish("audit.events.x"))
    assert (await nc.jetstream().stream_info(names.stream)).config.name == names.stream


async def test_audit_dlq_may_read_letters_and_publish_but_delete_nothing(
    server: NatsServer, streams: Settings, nc: NATS
) -> None:
    names = streams.names
    await nc.jetstream().publish(names.dlq_subject("invalid"), b"poison", stream=names.dlq_stream)
    async with connect_as(server, DLQ) as (dlq, errors):
        js = dlq.jetstream()
        assert (await js.get_msg(names.dlq_stream, 1)).data == b"poison"  # its job: read letters
        for verb in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE"):
            await request_refused(dlq, errors, f"$JS.API.{verb}.{names.dlq_stream}")
        await request_refused(dlq, errors, f"$JS.API.STREAM.MSG.GET.{names.stream}", b'{"seq":1}')
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.durable}"
        await request_refused(dlq, errors, pull, b'{"batch": 1}')
        await refused(errors, names.dlq_subject("x"), lambda: dlq.publish(names.dlq_subject("x")))
    assert (await nc.jetstream().stream_info(names.dlq_stream)).state.messages == 1


def test_app_processes_get_no_credentials_in_their_url(streams: Settings) -> None:
    assert "@" not in without_credentials(streams.nats_url)


def test_the_shipped_nats_config_is_the_projects_authorization() -> None:
    """config/nats-auth.conf (compose) is what audit_events.broker defines, nothing else."""
    committed = (ROOT / "config" / "nats-auth.conf").read_text()
    refs = {identity: f"${var}" for identity, var in PASSWORD_VARS.items()}
    body = "\n".join(line for line in committed.splitlines() if not line.startswith("#"))
    assert body + "\n" == authorization(refs, StreamNames())


async def test_the_shipped_nats_config_refuses_anonymous_and_admits_each_identity(
    tmp_path: Path,
) -> None:
    """The compose config itself, on a real nats-server, passwords from its environment."""
    for name in ("nats.conf", "nats-auth.conf"):
        shutil.copy(ROOT / "config" / name, tmp_path / name)
    await assert_admits_only_the_identities(tmp_path / "nats.conf")

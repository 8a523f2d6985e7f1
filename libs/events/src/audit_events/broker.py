"""Who may do what on the broker: one NATS user per process role, least privilege each, and the
client options every audit process connects with.

An attacker with network access and a NATS client must not be able to read events, pull and
ack them away from the durable, forge events or delete streams. So the server has no anonymous
access, and each identity is allowed only the subjects its job needs:

- ``audit-api`` publishes events (``audit.events.>``) and may read its stream's info;
- ``audit-consumer`` pulls from and acks its durable, reads the durable's info, trims ``AUDIT``
  below the durable's ack floor (a purge; its acks could remove those events from a work queue
  just the same), publishes dead letters (``audit.dlq.>``): it cannot create or delete anything;
- ``audit-setup`` creates, updates and reads the two streams and the durable (no delete, no
  purge);
- ``audit-query`` publishes only the events that record reads of the log
  (``audit.events.audit.>``): it cannot forge an account event;
- ``audit-dlq`` (an operator's tool) reads the dead-letter stream and publishes events (the
  letters it replays, and the record of each replay): it cannot delete a letter;
- every identity receives replies only on its own inbox prefix, so none can read another's.

More producers get an identity of their own with :func:`producer`.
The one thing a role's subjects cannot narrow: a consumer could ``+TERM`` a message through its
ack subject. The consumer is the trusted writer; its credentials are the ones to guard most.
"""

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client as NATS
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_events.naming import StreamNames

log = logging.getLogger("audit.broker")

API, CONSUMER, SETUP, QUERY = "audit-api", "audit-consumer", "audit-setup", "audit-query"
DLQ, RETENTION = "audit-dlq", "audit-retention"
IDENTITIES = (API, CONSUMER, SETUP, QUERY, DLQ, RETENTION)
PASSWORD_VARS = {name: f"AUDIT_NATS_{name.split('-')[1].upper()}_PASSWORD" for name in IDENTITIES}
"""The environment variable that holds each identity's password where several are configured
at once (the NATS server's config, compose's .env, ``audit-keygen``'s output)."""


def inbox_prefix(identity: str) -> str:
    """Replies to ``identity`` arrive below this prefix, which only it may subscribe to."""
    return f"_INBOX_{identity}"


def producer(identity: str, subjects: list[str], names: StreamNames) -> dict[str, Any]:
    """Permissions of an identity that only publishes events (and reads its stream's info)."""
    return {
        "publish": {"allow": [*subjects, f"$JS.API.STREAM.INFO.{names.stream}"]},
        "subscribe": {"allow": [f"{inbox_prefix(identity)}.>"]},
    }


def permissions(names: StreamNames) -> dict[str, dict[str, Any]]:
    """Each identity's NATS ``permissions`` block."""
    stream, dlq, durable = names.stream, names.dlq_stream, names.durable
    setup_api = [
        f"$JS.API.STREAM.{verb}.{name}"
        for name in (stream, dlq)
        for verb in ("CREATE", "UPDATE", "INFO")
    ] + [
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
    ]
    return {
        API: producer(API, [names.events_subjects], names),
        QUERY: producer(QUERY, [names.event_subject("audit.>")], names),
        RETENTION: producer(RETENTION, [names.event_subject("audit.retention.>")], names),
        CONSUMER: {
            "publish": {
                "allow": [
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                    f"$JS.ACK.{stream}.{durable}.>",
                    f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
                    f"$JS.API.STREAM.PURGE.{stream}",  # trims below the ack floor
                    names.dlq_subjects,
                ]
            },
            "subscribe": {"allow": [f"{inbox_prefix(CONSUMER)}.>"]},
        },
        SETUP: {
            "publish": {"allow": setup_api},
            "subscribe": {"allow": [f"{inbox_prefix(SETUP)}.>"]},
        },
        DLQ: {
            "publish": {
                "allow": [
                    f"$JS.API.STREAM.INFO.{dlq}",
                    f"$JS.API.STREAM.MSG.GET.{dlq}",
                    names.events_subjects,
                ]
            },
            "subscribe": {"allow": [f"{inbox_prefix(DLQ)}.>"]},
        },
    }


def authorization(passwords: dict[str, str], names: StreamNames) -> str:
    """The server's ``authorization`` block for ``passwords`` ({identity: password}); a value
    starting with ``$`` stays a reference to the server's environment (compose, the chart).
    Identities not in :data:`IDENTITIES` (a test's admin) get every permission."""
    roles = permissions(names)
    users = []
    for user, password in passwords.items():
        secret = password if password.startswith("$") else json.dumps(password)
        entry = f"    {{user: {json.dumps(user)}, password: {secret}"
        if user in roles:
            entry += f", permissions: {json.dumps(roles[user])}"
        users.append(entry + "}")
    return "authorization {\n  users = [\n" + ",\n".join(users) + "\n  ]\n}\n"


class BrokerSettings(BaseSettings):
    """How a process reaches NATS: ``NATS_URL`` (comma-separated seeds allowed), its identity's
    password, and TLS. Without a password it connects anonymously (a developer's own server)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    nats_url: str = Field("nats://127.0.0.1:4222", alias="NATS_URL")
    nats_user: str | None = Field(None, alias="AUDIT_NATS_USER")
    nats_password: str | None = Field(None, alias="AUDIT_NATS_PASSWORD", repr=False)
    nats_tls_ca: str | None = Field(None, alias="AUDIT_NATS_TLS_CA")
    nats_tls_cert: str | None = Field(None, alias="AUDIT_NATS_TLS_CERT")
    nats_tls_key: str | None = Field(None, alias="AUDIT_NATS_TLS_KEY")

    def connect_options(self, identity: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` as ``identity`` (the user name, unless
        ``AUDIT_NATS_USER`` says otherwise)."""
        options: dict[str, Any] = {
            "servers": [s.strip() for s in self.nats_url.split(",") if s.strip()],
            "name": identity,
            "inbox_prefix": inbox_prefix(identity),
        }
        if self.nats_password:
            options.update(user=self.nats_user or identity, password=self.nats_password)
        if self.nats_tls_ca or self.nats_tls_cert:
            context = ssl.create_default_context(cafile=self.nats_tls_ca)
            if self.nats_tls_cert:
                context.load_cert_chain(self.nats_tls_cert, self.nats_tls_key)
            options["tls"] = context
        return options


async def connect_until(
    settings: BrokerSettings,
    identity: str,
    stop: asyncio.Event,
    max_delay: float = 5.0,
    **callbacks: Any,
) -> NATS | None:
    """Connect as ``identity``, retrying with backoff (up to ``max_delay``) until NATS answers
    or ``stop`` is set (then ``None``); from then on nats-py reconnects by itself, forever.
    ``callbacks``: nats-py's ``error_cb`` and co. The one connect loop of every process."""
    delay = 0.2
    while not stop.is_set():
        try:
            return await nats.connect(
                **settings.connect_options(identity),
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=5,
                **callbacks,
            )
        except Exception as exc:
            log.warning("NATS not reachable (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, max_delay)
    return None


async def connect_forever(settings: BrokerSettings, identity: str, **callbacks: Any) -> NATS:
    """:func:`connect_until` with nothing to stop it (a service's background connect, which is
    cancelled on shutdown)."""
    nc = await connect_until(settings, identity, asyncio.Event(), **callbacks)
    assert nc is not None  # only a set event ends the loop without a connection
    return nc

"""Factories and helpers shared by the tests: events, bad credentials, row counting."""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import nats
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from audit_consumer.writer import BatchWriter, WriteResult
from audit_devservers import Child, free_port
from audit_devservers.servers import nats_server_binary
from audit_events import AuditEvent, Row, encode, keygen, row, uuid7
from audit_events.auth import issue_token
from audit_events.authorship import EventKeys, signed
from audit_events.broker import PASSWORD_VARS
from audit_verify.checker import Report, VerifySettings, verify
from tests.env import EVENT_KEY, JWT_SECRET, SEAL_PUBLIC_KEY

SECRET = JWT_SECRET


def unchecked_event(**fields: object) -> AuditEvent:
    """An event holding what the model refuses (NUL, say): what an older or foreign producer
    could still put on the wire, to test the defences behind the model."""
    return make_event().model_copy(update=fields)


def make_event(**overrides: object) -> AuditEvent:
    fields: dict[str, object] = {
        "id": uuid7(),
        "occurred_at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "actor_type": "user",
        "actor_id": "alice",
        "action": "account.update",
        "resource_type": "account",
        "resource_id": "acc-1",
        "outcome": "success",
        "source_ip": "10.0.0.7",
        "user_agent": "curl/8",
        "metadata": {"method": "PATCH", "fields": ["email"]},
    }
    fields.update(overrides)
    return AuditEvent.model_validate(fields)


def sign(data: bytes) -> str:
    """The ``Audit-Signature`` the API would send with ``data``."""
    return EventKeys([EVENT_KEY]).sign(data)


def published(event: AuditEvent, msg_id: str | None = None) -> dict[str, Any]:
    """``payload`` and ``headers`` of ``event`` as the API publishes it (signed)."""
    data, headers = signed(event, EventKeys([EVENT_KEY]))
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    return {"payload": data, "headers": headers}


async def publish_events(nc: Any, names: Any, n: int, prefix: str) -> None:
    """``n`` account.update events (resources ``<prefix>0`` …) as the API publishes them, all
    acknowledged by JetStream (``nc``: any client allowed to publish; ``names``: StreamNames)."""
    js = nc.jetstream()
    subject = names.event_subject("account.update")
    events = [make_event(resource_id=f"{prefix}{i}") for i in range(n)]
    await asyncio.gather(*(js.publish(subject, **published(e)) for e in events))


def signed_row(event: AuditEvent, stream_seq: int, signature: str | None = None) -> Row:
    """``event`` as the consumer stores it: with the API's signature (or the one given) and
    the digest of its canonical bytes."""
    data = encode(event)
    return row(event, stream_seq, signature or sign(data), hashlib.sha256(data).digest())


async def write(writer: BatchWriter, rows: list[Row]) -> WriteResult:
    return await writer.write(rows)


def verify_settings(db_url: str, **env: str) -> VerifySettings:
    """``audit-verify``'s settings with this session's keys (``env`` overrides, e.g.
    ``AUDIT_EVENT_KEYS=""`` to check seals only)."""
    keys = {"AUDIT_SEAL_PUBLIC_KEYS": SEAL_PUBLIC_KEY, "AUDIT_EVENT_KEYS": EVENT_KEY, **env}
    return VerifySettings.model_validate({"DATABASE_URL": db_url, **keys})


async def assert_intact(db_url: str, timeout: float = 60) -> Report:
    """``audit-verify`` finds nothing, once every row is sealed (the consumers seal within a
    few seconds; waiting for that is a bound, not a speed assertion)."""
    settings = verify_settings(db_url)
    deadline = time.monotonic() + timeout
    while True:
        report = await asyncio.to_thread(verify, settings, grace=timedelta(seconds=timeout))
        assert report.findings == [], report.findings
        if report.pending == 0:
            return report
        assert time.monotonic() < deadline, f"{report.pending} rows still unsealed"
        await asyncio.sleep(0.5)


async def count_rows(db: psycopg.AsyncConnection[Any]) -> int:
    """Rows in ``audit_events``."""
    cur = await db.execute("SELECT count(*) FROM audit_events")
    (n,) = await cur.fetchone()  # type: ignore[misc]
    return int(n)


async def stored_ids(db_url: str) -> list[str]:
    """Every row's id (a new connection each time: PostgreSQL may have restarted meanwhile)."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute("SELECT id::text FROM audit_events")
        return [r[0] for r in await cur.fetchall()]


async def rows_at_least(db_url: str, n: int) -> bool:
    return len(await stored_ids(db_url)) >= n


async def drained(settings: Any) -> bool:
    """JetStream holds nothing for the durable any more: every published event delivered and
    acked, i.e. stored (``settings``: the consumer's, ``NATS_URL`` one URL or a list)."""
    names = settings.names
    nc = await nats.connect(servers=settings.nats_url.split(","))
    try:
        info = await nc.jetstream().consumer_info(names.stream, names.durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)
    finally:
        await nc.close()


# -- credentials the API must refuse, each with the denied event's reason code ---------------


def bearer(token: str) -> str:
    return f"Bearer {token}"


def _none_token() -> str:
    return jwt.encode({"sub": "eve", "exp": int(time.time()) + 60}, "", algorithm="none")


def _rs256_token() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode({"sub": "eve", "exp": int(time.time()) + 60}, key, algorithm="RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_keyed_with_public_key() -> str:
    """HS/RS confusion: an HS256 token whose HMAC key is an RSA public key (public knowledge)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": "eve", "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _crit_token() -> str:
    """PyJWT checks ``crit`` before the signature and used to quote it in its message."""
    header = _b64(json.dumps({"alg": "HS256", "crit": ["status=success actor=root"]}).encode())
    payload = _b64(json.dumps({"sub": "eve", "exp": 2**40}).encode())
    return f"{header}.{payload}.{_b64(b'x' * 32)}"


def raw_token(claims: str) -> str:
    """A correctly signed token whose payload is ``claims`` verbatim (e.g. a lone surrogate)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(claims.encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{_b64(signature.digest())}"


REASONS = {
    "missing_token",
    "not_bearer",
    "token_too_large",
    "token_expired",
    "bad_signature",
    "bad_algorithm",
    "missing_claim",
    "malformed_token",
    "invalid_token",
    "bad_subject",
    "token_lifetime",
}
BAD_CREDENTIALS = [
    (None, "missing_token"),
    ("", "missing_token"),
    ("Basic dXNlcjpwYXNz", "not_bearer"),
    ("Bearer", "not_bearer"),
    (lambda: bearer(_none_token()), "bad_algorithm"),
    (lambda: bearer(_rs256_token()), "bad_algorithm"),
    (lambda: bearer(_hs256_keyed_with_public_key()), "bad_signature"),
    (
        lambda: bearer(issue_token("another-secret-0123456789abcdef0123", "eve")),
        "bad_signature",
    ),
    (lambda: bearer(issue_token(SECRET, "eve", ttl_seconds=-10)), "token_expired"),
    (lambda: bearer(jwt.encode({"exp": int(time.time()) + 60}, SECRET, "HS256")), "missing_claim"),
    (lambda: bearer(jwt.encode({"sub": "eve"}, SECRET, "HS256")), "missing_claim"),
    (lambda: bearer(jwt.encode({"sub": "", "exp": 2**40}, SECRET, "HS256")), "bad_subject"),
    (lambda: bearer(jwt.encode({"sub": "a\x00b", "exp": 2**40}, SECRET, "HS256")), "bad_subject"),
    (lambda: bearer(jwt.encode({"sub": "x" * 300, "exp": 2**40}, SECRET, "HS256")), "bad_subject"),
    (lambda: bearer(raw_token('{"sub": "\\ud800", "exp": 1099511627776}')), "bad_subject"),
    (lambda: bearer(jwt.encode({"sub": "eve", "exp": 10**11}, SECRET, "HS256")), "token_lifetime"),
    (lambda: bearer(_crit_token()), "invalid_token"),
    (lambda: bearer("a" * 9000), "token_too_large"),
    (lambda: bearer("not.a.jwt"), "malformed_token"),
]


# -- a shipped NATS configuration, on a real server ------------------------------------------


async def assert_admits_only_the_identities(config: Path) -> None:
    """Run nats-server on ``config`` (its passwords from the environment, as compose and the
    chart run it): anonymous clients are refused, each identity with its password gets in."""
    keys = keygen.generate(tuple(PASSWORD_VARS.values()))
    port = free_port()
    argv = [nats_server_binary(), "-c", str(config), "-js", "-sd", str(config.parent / "js"),
            "-a", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = Child("nats", argv, {**os.environ, **keys}, config.parent / "nats.log").start()
    url = f"nats://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            await asyncio.sleep(0.1)
        with pytest.raises(nats.errors.Error):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        for identity, var in PASSWORD_VARS.items():
            nc = await nats.connect(url, user=identity, password=keys[var], allow_reconnect=False)
            await nc.close()
    finally:
        server.stop()


async def wait_for(predicate, timeout: float = 60, interval: float = 0.1) -> None:
    """Poll an (async or sync) predicate until true; fail with the timeout otherwise.

    A generous bound for "eventually", not a speed assertion."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 if absent)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


SENDER = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'dave')}", "User-Agent": "e2e/1"}


async def send(url: str, n: int, concurrency: int = 16) -> list[str]:
    """PATCH ``n`` accounts; the audit ids of the 200s (every request must get one)."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> str:
            async with gate:
                r = await client.patch(f"/accounts/acc-{i}", json={"tier": i}, headers=SENDER)
            assert r.status_code == 200, r.text
            return str(r.json()["audit_event_id"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def closed_by_peer(sock: socket.socket, within: float = 30) -> bytes:
    """What the server sent before closing ``sock``; fails if it stays open ``within`` s."""
    sock.settimeout(within)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received

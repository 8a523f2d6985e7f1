"""Authorship: each producer signs every event it publishes with an HMAC key, the consumer
checks it before storing, ``audit-verify`` re-checks stored rows.

Why an HMAC per event and not a signature: an Ed25519 verify costs tens of times an HMAC
(``docs/performance.md``), which would cut the consumer's throughput several times. The price: the
key that checks an event can also forge one, so it lives only in the producers, the consumers
and (optionally) ``audit-verify``. Public-key signatures are used once per seal (``seals.py``).

Keys are configured as ``AUDIT_EVENT_KEYS``, a comma-separated list of secrets; the first one
signs, all of them check (rotation: add the new key everywhere, then move it first on the
producers, keep the old one for checking what it signed). A key's id is derived from it, so
nothing else needs to be configured, and it is stored with each row's signature.

Where keys check (the consumers, ``audit-verify``), an entry may bind its key to the actions it
may sign: ``secret@audit.query|audit.read`` (an action, or its dotted prefix: ``audit.dlq``
covers ``audit.dlq.replay``). The query service's and ``audit-dlq``'s keys are bound so: with
one of them and a broker password that may publish anywhere, still no account event.
"""

import base64
import hashlib
import hmac
from collections.abc import Iterable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_events.model import AuditEvent, encode

READS = ("audit.query", "audit.read", "audit.export", "audit.feed")
"""The actions ``audit-query`` records, the only ones its key may sign."""
REPLAYS = ("audit.dlq",)
"""The actions ``audit-dlq`` records (``audit.dlq.replay``), the only ones its key may sign."""
REMOVALS = ("audit.retention",)
"""The actions ``audit-retention`` records (a partition removed, a hold added or released), the
only ones its key may sign."""

SIGNATURE_HEADER = "Audit-Signature"
"""NATS header holding ``<key id>:<base64 HMAC-SHA256 of the payload>``."""
MIN_KEY_BYTES = 32


def key_id(secret: str) -> str:
    """A short public name for a key: the first 8 hex digits of a hash of it."""
    return hashlib.sha256(b"audit-event-key:" + secret.encode()).hexdigest()[:8]


class _Hmac:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once: each message
    then costs two hash copies and updates instead of ``hmac.digest``'s full key setup (about
    half the time). The result is the standard HMAC, byte for byte."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        if len(key) > 64:  # the SHA-256 block size
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __reduce__(self) -> tuple[type["_Hmac"], tuple[bytes]]:
        return _Hmac, (self.key,)  # hash states do not pickle; audit-verify's workers rebuild

    def digest(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def bound(secret: str, actions: Iterable[str]) -> str:
    """The ``AUDIT_EVENT_KEYS`` entry that lets ``secret`` sign only ``actions``."""
    return f"{secret}@{'|'.join(actions)}"


class EventKeys:
    """The HMAC keys a process holds: the first signs, every one checks (entries may be
    :func:`bound` to actions)."""

    def __init__(self, entries: Iterable[str]) -> None:
        keys: dict[str, bytes] = {}
        self._actions: dict[str, tuple[str, ...]] = {}  # key id -> what it may sign; else all
        for entry in entries:
            secret, _, actions = entry.partition("@")
            if not secret:
                continue
            keys[kid := key_id(secret)] = secret.encode()
            if actions:
                self._actions[kid] = tuple(a.strip() for a in actions.split("|") if a.strip())
        if any(len(key) < MIN_KEY_BYTES for key in keys.values()):
            raise ValueError(f"an event key must have {MIN_KEY_BYTES}+ bytes (audit-keygen)")
        if not keys:
            raise ValueError("no event key: set AUDIT_EVENT_KEYS (audit-keygen prints one)")
        self._keys = {kid: _Hmac(key) for kid, key in keys.items()}
        self.signing_id = next(iter(keys))

    @classmethod
    def parse(cls, text: str) -> "EventKeys":
        """From ``AUDIT_EVENT_KEYS``: secrets separated by commas."""
        return cls(part.strip() for part in text.split(","))

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def sign(self, data: bytes) -> str:
        """The ``Audit-Signature`` value for ``data``, with the signing key."""
        tag = self._keys[self.signing_id].digest(data)
        return f"{self.signing_id}:{base64.b64encode(tag).decode()}"

    def check(self, data: bytes, signature: str | None) -> str | None:
        """``None`` if ``signature`` is a valid signature of ``data`` by one of our keys,
        otherwise why not (for the dead-letter reason or the verifier's finding)."""
        if not signature:
            return "unsigned"
        kid, _, tag = signature.partition(":")
        key = self._keys.get(kid)
        if key is None:
            return f"unknown key {kid[:16]!r}"
        expected = base64.b64encode(key.digest(data)).decode()
        return None if hmac.compare_digest(expected, tag) else "signature does not match"

    def may_sign(self, signature: str, action: str) -> str | None:
        """``None`` if the key of a (checked) ``signature`` may sign ``action``, else why not."""
        kid = signature.partition(":")[0]
        allowed = self._actions.get(kid)
        if allowed is None or any(action == a or action.startswith(a + ".") for a in allowed):
            return None
        return f"key {kid} may not sign {action}"


def signed(event: AuditEvent, keys: EventKeys) -> tuple[bytes, dict[str, str]]:
    """An event as every producer publishes it: its canonical bytes, and headers with the
    ``Nats-Msg-Id`` JetStream dedupes on and the producer's signature."""
    data = encode(event)
    return data, {"Nats-Msg-Id": str(event.id), SIGNATURE_HEADER: keys.sign(data)}


class EventKeySettings(BaseSettings):
    """``AUDIT_EVENT_KEYS`` as every process reads it: producers sign with the first, consumers
    and ``audit-verify`` check with all."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    event_keys: str = Field("", alias="AUDIT_EVENT_KEYS", repr=False)

    @property
    def keys(self) -> EventKeys:
        return EventKeys.parse(self.event_keys)

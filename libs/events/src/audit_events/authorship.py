"""Authorship: each producer signs every event it publishes with an HMAC key, the consumer
checks it before storing, ``audit-verify`` re-checks stored rows.

Why an HMAC per event and not a signature: HMAC-SHA256 of a 400-byte event costs ~1.5 µs, an
Ed25519 verify ~60 µs, which would cut the consumer's throughput several times. The price: the
key that checks an event can also forge one, so it lives only in the producers, the consumers
and (optionally) ``audit-verify``. Public-key signatures are used once per seal (``seals.py``).

Keys are configured as ``AUDIT_EVENT_KEYS``, a comma-separated list of secrets; the first one
signs, all of them check (rotation: add the new key everywhere, then move it first on the
producers, keep the old one for checking what it signed). A key's id is derived from it, so
nothing else needs to be configured, and it is stored with each row's signature.
"""

import base64
import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "Audit-Signature"
"""NATS header holding ``<key id>:<base64 HMAC-SHA256 of the payload>``."""
MIN_KEY_BYTES = 32


def key_id(secret: str) -> str:
    """A short public name for a key: the first 8 hex digits of a hash of it."""
    return hashlib.sha256(b"audit-event-key:" + secret.encode()).hexdigest()[:8]


class EventKeys:
    """The HMAC keys a process holds: the first signs, every one checks."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._keys = {key_id(s): s.encode() for s in secrets if s}
        if any(len(key) < MIN_KEY_BYTES for key in self._keys.values()):
            raise ValueError(f"an event key must have {MIN_KEY_BYTES}+ bytes (audit-keygen)")
        if not self._keys:
            raise ValueError("no event key: set AUDIT_EVENT_KEYS (audit-keygen prints one)")
        self.signing_id = next(iter(self._keys))

    @classmethod
    def parse(cls, text: str) -> "EventKeys":
        """From ``AUDIT_EVENT_KEYS``: secrets separated by commas."""
        return cls(part.strip() for part in text.split(","))

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def sign(self, data: bytes) -> str:
        """The ``Audit-Signature`` value for ``data``, with the signing key."""
        tag = hmac.digest(self._keys[self.signing_id], data, "sha256")
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
        expected = base64.b64encode(hmac.digest(key, data, "sha256")).decode()
        return None if hmac.compare_digest(expected, tag) else "signature does not match"

"""Seals: signed, hash-chained statements of which rows the table held, so that any later
change, deletion or insertion is found by ``audit-verify``.

Every row carries the SHA-256 of its canonical bytes (``digest``, computed by the consumer that
wrote it). A seal covers every row whose transaction id lies in ``[from_tx, upto_tx)`` — a range
that no running transaction can still add to (``horizon.py``) — and holds one *entry* per row
(a flag, the id, the digest), the SHA-256 of those entries, the hash of the previous seal, and
an Ed25519 signature by the sealing key. Because the ranges tile the transaction ids without
gaps or overlaps, every row is sealed exactly once; because the seal lists its rows, a change,
deletion or insertion is found row by row.

Keys are Ed25519: ``AUDIT_SEAL_KEY`` (consumers only) is the private key, base64 of its 32 raw
bytes or PKCS#8 PEM; ``AUDIT_SEAL_PUBLIC_KEYS`` (``audit-verify``) a comma-separated list of
public keys, each base64 raw, PEM, or a PEM certificate carrying one (the Helm chart's form).
A key's id is derived from its public key.
"""

import base64
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_events.model import utc_text

AUTHORED, UNSIGNED, LETTER, DUPLICATE = 0, 1, 2, 3
"""Entry flags: a row with a producer signature (checked by the consumer), or without one (rows
from before authorship, or schema_version 1 while ``AUDIT_ACCEPT_UNSIGNED_UNTIL``); a dead-letter
record; a duplicate record (version 2 seals only)."""
VERSION = 2
"""Version 1 seals list each row's ``digest`` (the canonical event bytes' SHA-256) and cover
only ``audit_events``. Version 2 (this one) binds every column of a row — the database's own
too: an entry's hash is ``sha256(digest || ROW_BINDING)`` — covers the dead-letter and duplicate
records of its transaction range, and carries the ack floor the sealing consumer last read.
Both versions verify; a consumer of this version writes only version 2."""

ROW_BINDING = (
    "int8send(tx_id::text::bigint) || timestamptz_send(recorded_at) || int8send(stream_seq)"
    " || int4send(coalesce(epoch, -1)) || coalesce(inet_send(source_ip), ''::bytea)"
)
"""SQL over an ``audit_events`` row: the bytes of what the database assigned or holds beyond the
event's canonical form — its transaction, its time, its broker sequence and epoch, and the
address exactly as stored (family, mask and all: ``host()`` would hide a mask)."""
LETTER_HASH = (
    "sha256(int8send(tx_id::text::bigint) || timestamptz_send(recorded_at) || digest"
    " || convert_to(subject || E'\\n' || kind || E'\\n' || reason, 'UTF8'))"
)
DUPLICATE_HASH = (
    "sha256(int8send(tx_id::text::bigint) || timestamptz_send(recorded_at) || uuid_send(event_id))"
)
RECORD_KEY = "int4send(epoch) || int8send(stream_seq) || '\\x00000000'::bytea"
"""The 16-byte key of a dead-letter or duplicate entry: its epoch and sequence."""


def bound(digest: bytes, binding: bytes) -> bytes:
    """A version 2 row entry's hash: the row's canonical digest bound to its stored values."""
    return hashlib.sha256(digest + binding).digest()


ENTRY_BYTES = 1 + 16 + 32
GENESIS = bytes(32)
"""``prev_hash`` of the first seal."""


def entries(blob: bytes) -> Iterator[tuple[int, UUID, bytes]]:
    """The ``(flag, id, digest)`` of each entry in ``blob``."""
    for at in range(0, len(blob) - ENTRY_BYTES + 1, ENTRY_BYTES):
        yield blob[at], UUID(bytes=blob[at + 1 : at + 17]), blob[at + 17 : at + ENTRY_BYTES]


@dataclass(frozen=True)
class Floor:
    """Every sequence of ``epoch`` from ``first`` to ``seq`` was acknowledged by the durable: each
    must be a row, a dead-letter or duplicate record (or, after retention, in a cut)."""

    epoch: int
    first: int
    seq: int


@dataclass(frozen=True)
class Seal:
    """One link of the chain (a row of ``audit_seals``)."""

    seq: int
    from_tx: int
    upto_tx: int
    row_count: int
    rows_digest: bytes
    prev_hash: bytes
    sealed_at: datetime
    key_id: str
    signature: bytes = b""
    version: int = VERSION
    kind: str = "rows"  # or "cut" (retention)
    scope: str = ""  # a partition (retention); empty: the whole table
    floor: Floor | None = None
    body: bytes = b""  # a cut's details (retention)

    def payload(self) -> bytes:
        """The signed bytes: every field but the signature, one per line."""
        common = (
            str(self.seq),
            str(self.from_tx),
            str(self.upto_tx),
            str(self.row_count),
            self.rows_digest.hex(),
            self.prev_hash.hex(),
            utc_text(self.sealed_at),
            self.key_id,
        )
        if self.version == 1:
            return "\n".join(("audit-seal:1", *common)).encode()
        floor = self.floor
        return "\n".join(
            (
                "audit-seal:2",
                *common,
                self.kind,
                self.scope,
                f"{floor.epoch}:{floor.first}:{floor.seq}" if floor else "-",
                hashlib.sha256(self.body).hexdigest(),
            )
        ).encode()

    @property
    def hash(self) -> bytes:
        """What the next seal links to, and what an operator pins (as :attr:`head`)."""
        return hashlib.sha256(self.payload()).digest()

    @property
    def head(self) -> str:
        """``<seq>:<hash hex>``: give it to ``audit-verify --head`` to prove that the chain
        still extends this seal."""
        return f"{self.seq}:{self.hash.hex()}"


SEAL_COLUMNS = (
    "seq, from_tx::text::bigint, upto_tx::text::bigint, row_count, rows_digest, prev_hash,"
    " sealed_at, key_id, signature, version, kind, scope, floor_epoch, floor_first, floor_seq,"
    " coalesce(body, ''::bytea)"
)
"""The ``audit_seals`` columns :func:`seal_of` takes, in its order (a select list)."""
NEWEST_SEALS = f"SELECT {SEAL_COLUMNS} FROM audit_seals ORDER BY seq DESC LIMIT %s"  # noqa: S608
"""The newest seals, newest first: ``(1,)`` for the head; ``(LOOK_BACK,)`` to find the newest
one that checks when the head does not (the sealer, and what the query service calls sealed)."""
LOOK_BACK = 100


def seal_of(row: Sequence[Any]) -> Seal:
    """A :class:`Seal` from a row of :data:`SEAL_COLUMNS`."""
    seq, start, upto, count, digest, prev, at, key_id, signature = row[:9]
    floor = Floor(row[12], row[13], row[14]) if row[12] is not None else None
    return Seal(
        seq, start, upto, count, bytes(digest), bytes(prev), at, key_id, bytes(signature),
        version=row[9], kind=row[10], scope=row[11], floor=floor, body=bytes(row[15]),
    )  # fmt: skip


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_public_raw(key)).hexdigest()[:8]


class SealKey:
    """The private sealing key (consumers only)."""

    def __init__(self, text: str) -> None:
        text = text.strip()
        try:
            if text.startswith("-----"):
                key = serialization.load_pem_private_key(text.encode(), None)
            else:
                key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
        except ValueError as exc:
            raise ValueError(f"AUDIT_SEAL_KEY is not an Ed25519 private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("AUDIT_SEAL_KEY is not an Ed25519 private key")
        self._key = key
        self.id = seal_key_id(key.public_key())

    def public_text(self) -> str:
        """The public key as ``AUDIT_SEAL_PUBLIC_KEYS`` takes it (base64 raw)."""
        return base64.b64encode(_public_raw(self._key.public_key())).decode()

    def sign(self, seal: Seal) -> Seal:
        named = replace(seal, key_id=self.id)
        return replace(named, signature=self._key.sign(named.payload()))


def generate_seal_key() -> str:
    """A new private key as ``AUDIT_SEAL_KEY`` takes it (base64 raw)."""
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw).decode()


def _public_key(text: str) -> Ed25519PublicKey:
    text = text.strip()
    key: object
    if "BEGIN CERTIFICATE" in text:
        key = x509.load_pem_x509_certificate(text.encode()).public_key()
    elif text.startswith("-----"):
        key = serialization.load_pem_public_key(text.encode())
    else:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


class SealKeys:
    """The public keys ``audit-verify`` checks seals with (never a private one)."""

    def __init__(self, texts: Iterable[str]) -> None:
        try:
            keys = [_public_key(t) for t in texts if t.strip()]
        except ValueError as exc:
            raise ValueError(f"AUDIT_SEAL_PUBLIC_KEYS: {exc}") from None
        if not keys:
            raise ValueError("no seal public key: set AUDIT_SEAL_PUBLIC_KEYS")
        self._keys = {seal_key_id(k): k for k in keys}

    @classmethod
    def parse(cls, text: str) -> "SealKeys":
        return cls(text.split(","))

    def check(self, seal: Seal) -> str | None:
        """``None`` if the seal's signature is valid, otherwise why not."""
        key = self._keys.get(seal.key_id)
        if key is None:
            return f"signed by unknown key {seal.key_id[:16]!r}"
        try:
            key.verify(seal.signature, seal.payload())
        except InvalidSignature:
            return "bad signature"
        return None

"""The archive format: a partition retention removed, as files a person can keep anywhere and
check offline with public keys only (``audit-verify --archive``).

Per partition, a directory named after it:

- ``rows.ndjson.gz``: one JSON line per row in ``(tx_id, id)`` order — the canonical event bytes
  exactly as the producer signed them (``event``), its signature, and the values the database
  assigned that the seal binds (``tx_id``, ``recorded_at``, ``stream_seq``, ``epoch``, the
  address as stored, mask and all);
- ``seals.ndjson``: the partition's seals, whole (their entries included);
- ``manifest.json``: the partition's bounds, row count, seals, and each file's SHA-256 — the
  cut signs the manifest's SHA-256, so the files are bound to the chain;
- ``cut.json``: the signed cut, once the sealer made it.

A row's seal entry is recomputed from its line (``entry``), exactly as the sealer computed it in
SQL (``seals.ROW_BINDING``): so a line altered, dropped or added is named like a row.
"""

import base64
import hashlib
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from audit_events.seals import AUTHORED, UNSIGNED, Floor, Seal, bound

ROWS, SEALS, MANIFEST, CUT = "rows.ndjson.gz", "seals.ndjson", "manifest.json", "cut.json"
FORMAT = "audit-archive:1"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def binding(
    tx: int, recorded_at: datetime, stream_seq: int, epoch: int | None, address: str | None
) -> bytes:
    """:data:`seals.ROW_BINDING`'s bytes, from the values (PostgreSQL's binary send forms)."""
    micros = (recorded_at - _PG_EPOCH) // timedelta(microseconds=1)
    out = b"".join(
        (
            tx.to_bytes(8, "big", signed=True),
            micros.to_bytes(8, "big", signed=True),
            stream_seq.to_bytes(8, "big", signed=True),
            (-1 if epoch is None else epoch).to_bytes(4, "big", signed=True),
        )
    )
    if address:
        iface = ipaddress.ip_interface(address)
        raw = iface.ip.packed
        family = 2 if iface.version == 4 else 3  # PGSQL_AF_INET, PGSQL_AF_INET6
        out += bytes((family, iface.network.prefixlen, 0, len(raw))) + raw
    return out


def row_line(
    event_id: str,
    event: bytes,
    signature: str | None,
    tx: int,
    recorded_at: datetime,
    stream_seq: int,
    epoch: int | None,
    address: str | None,
) -> bytes:
    """One line of :data:`ROWS` (``address``: ``text(source_ip)``, with its mask)."""
    return (
        orjson.dumps(
            {
                "id": event_id,
                "event": event.decode(),
                "signature": signature,
                "tx_id": tx,
                "recorded_at": recorded_at.astimezone(UTC).isoformat(timespec="microseconds"),
                "stream_seq": stream_seq,
                "epoch": epoch,
                "source_ip": address,
            }
        )
        + b"\n"
    )


def entry(line: dict[str, Any], version: int = 2) -> tuple[int, str, bytes]:
    """The seal entry (flag, id as 32 hex digits, hash) a row line must match."""
    digest = hashlib.sha256(line["event"].encode()).digest()
    if version >= 2:
        values = (line["tx_id"], datetime.fromisoformat(line["recorded_at"]),
                  line["stream_seq"], line["epoch"], line["source_ip"])  # fmt: skip
        digest = bound(digest, binding(*values))
    flag = UNSIGNED if line["signature"] is None else AUTHORED
    return flag, line["id"].replace("-", ""), digest


def seal_line(seal: Seal, entries: bytes) -> bytes:
    """One line of :data:`SEALS` (or the content of :data:`CUT`): every field of the seal."""
    f = seal.floor
    return (
        orjson.dumps(
            {
                "seq": seal.seq,
                "from_tx": seal.from_tx,
                "upto_tx": seal.upto_tx,
                "row_count": seal.row_count,
                "rows_digest": seal.rows_digest.hex(),
                "prev_hash": seal.prev_hash.hex(),
                "sealed_at": seal.sealed_at.astimezone(UTC).isoformat(timespec="microseconds"),
                "key_id": seal.key_id,
                "signature": base64.b64encode(seal.signature).decode(),
                "version": seal.version,
                "kind": seal.kind,
                "scope": seal.scope,
                "floor": [f.epoch, f.first, f.seq] if f else None,
                "body": base64.b64encode(seal.body).decode(),
                "entries": base64.b64encode(entries).decode(),
                "hash": seal.hash.hex(),
            }
        )
        + b"\n"
    )


def seal_from(d: dict[str, Any]) -> tuple[Seal, bytes]:
    """A seal and its entries from :func:`seal_line`'s JSON."""
    floor = Floor(*d["floor"]) if d["floor"] else None
    seal = Seal(
        seq=d["seq"], from_tx=d["from_tx"], upto_tx=d["upto_tx"], row_count=d["row_count"],
        rows_digest=bytes.fromhex(d["rows_digest"]), prev_hash=bytes.fromhex(d["prev_hash"]),
        sealed_at=datetime.fromisoformat(d["sealed_at"]), key_id=d["key_id"],
        signature=base64.b64decode(d["signature"]), version=d["version"], kind=d["kind"],
        scope=d["scope"], floor=floor, body=base64.b64decode(d["body"]),
    )  # fmt: skip
    return seal, base64.b64decode(d["entries"])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

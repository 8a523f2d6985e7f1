"""A cut: the signed statement, in the seal chain, that retention removed a partition — which
rows (its seals, their count, the first and last ``(tx_id, id)``), which broker sequences they
held (so ``audit-verify`` can tell a cut from a loss), which duplicate records repeat them, and
the SHA-256 of the archive's manifest (so the archive is bound to the chain).

It is the ``body`` of a seal of kind ``cut`` whose scope is the partition (``seals.py``),
signed by a consumer's sealer after it checked the partition itself (``audit_consumer/
cutting.py``); ``audit-retention`` only asks for it.
"""

from dataclasses import dataclass, field
from datetime import datetime

import orjson

Ranges = list[tuple[int, int]]

LEGACY_SEALS = (
    "SELECT s.seq, (SELECT count(*) FROM audit_events e WHERE e.tableoid = %(p)s::text::regclass"
    " AND e.tx_id >= s.from_tx AND e.tx_id < s.upto_tx) AS n FROM audit_seals s"
    " WHERE s.scope = '' AND s.kind = 'rows' AND s.row_count > 0"
    " AND s.upto_tx > %(first)s::text::xid8 AND s.from_tx <= %(last)s::text::xid8 ORDER BY s.seq"
)
"""Seals of scope ``''`` (made before partitions, or by a consumer of that version during an
upgrade) and how many rows of partition ``p`` each lists: a cut removes those rows without
removing the seals, which also list other rows and records (``Cut.legacy``)."""


@dataclass(frozen=True)
class Cut:
    partition: str
    lo: datetime
    hi: datetime
    rows: int
    seals: tuple[int, ...]
    manifest_sha256: str
    request: int
    sequences: dict[int, Ranges] = field(default_factory=dict)  # epoch -> [first, last] runs
    duplicates: tuple[tuple[int, int], ...] = ()  # (epoch, seq) of duplicates of removed rows
    first: tuple[int, str] | None = None  # the smallest (tx_id, id) removed: the feed's order
    last: tuple[int, str] | None = None
    legacy: dict[int, int] = field(default_factory=dict)  # scope-'' seal -> its rows removed

    def body(self) -> bytes:
        """Canonical JSON (keys sorted): the bytes the cut's seal signs."""
        return orjson.dumps(
            {
                "partition": self.partition,
                "lo": self.lo.isoformat(),
                "hi": self.hi.isoformat(),
                "rows": self.rows,
                "seals": list(self.seals),
                "manifest_sha256": self.manifest_sha256,
                "request": self.request,
                "sequences": {
                    str(e): [list(r) for r in runs] for e, runs in self.sequences.items()
                },
                "duplicates": [list(d) for d in self.duplicates],
                "first": list(self.first) if self.first else None,
                "last": list(self.last) if self.last else None,
                "legacy": {str(seq): n for seq, n in self.legacy.items()},
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def parse(cls, body: bytes) -> "Cut":
        """A cut from its body; raises ValueError when it is not one."""
        try:
            d = orjson.loads(body)
            return cls(
                partition=str(d["partition"]),
                lo=datetime.fromisoformat(d["lo"]),
                hi=datetime.fromisoformat(d["hi"]),
                rows=int(d["rows"]),
                seals=tuple(int(s) for s in d["seals"]),
                manifest_sha256=str(d["manifest_sha256"]),
                request=int(d["request"]),
                sequences={int(e): [(int(a), int(b)) for a, b in runs]
                           for e, runs in d["sequences"].items()},
                duplicates=tuple((int(e), int(s)) for e, s in d["duplicates"]),
                first=(int(d["first"][0]), str(d["first"][1])) if d["first"] else None,
                last=(int(d["last"][0]), str(d["last"][1])) if d["last"] else None,
                legacy={int(seq): int(n) for seq, n in d.get("legacy", {}).items()},
            )  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a cut: {exc}") from None

    def removed_after(self, tx: int, event_id: str) -> bool:
        """Did this cut remove rows that sort after the feed position ``(tx, event_id)``?"""
        return self.last is not None and self.last > (tx, event_id)

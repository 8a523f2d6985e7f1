"""The consumer as it was before tamper evidence, for ``make bench``'s "without" row only:
no signature check, no canonical-form check, no seal entries, no sealer. Never shipped.

Everything else is the real ``audit-consumer`` (same loop, decoding, COPY and acks), so the
difference between the two bench rows is what authorship and sealing cost. (The schema is the
new one in both: ``tx_id`` and its index are paid either way.)
"""

import asyncio
from typing import Any

from nats.aio.msg import Msg

from audit_consumer import consumer, main, sealer, writer
from audit_consumer.batch import Batch
from audit_events import decode, row


def decode_only(msgs: list[Msg], checks: Any) -> Batch:
    out = Batch(msgs)
    for msg in msgs:
        out.rows.append(row(decode(msg.data), msg.metadata.sequence.stream, None))
        out.entries.append(b"")
        out.valid.append(msg)
    return out


async def copy_only(self: writer.BatchWriter, data: bytes, entries: list[bytes]) -> int:
    """One autocommit COPY, as before (no transaction around it, no entries)."""
    async with self.conn.cursor() as cur, cur.copy(writer._COPY) as copy:
        await copy.write(data)
    return len(entries)


async def idle(self: Any) -> None:
    await asyncio.Event().wait()


async def nothing(self: Any) -> None:
    return None


consumer.decode_batch = decode_only  # type: ignore[attr-defined]
writer.BatchWriter._copy = copy_only  # type: ignore[method-assign]
sealer.Sealer.run = idle  # type: ignore[method-assign]
sealer.Sealer.seal = nothing  # type: ignore[method-assign]

if __name__ == "__main__":
    main.main()

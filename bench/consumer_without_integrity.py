"""The consumer as it was before tamper evidence, for ``make bench``'s "without" row only:
no signature check, no canonical-form check, no digest, no sealer. Never shipped.

Everything else is the real ``audit-consumer`` (same loop, decoding, COPY and acks), so the
difference between the two bench rows is what authorship and sealing cost. (The schema is the
new one in both: ``tx_id``, its index and a ``digest`` column, here all zeros, are paid either
way.)
"""

import asyncio
from typing import Any

from nats.aio.msg import Msg

from audit_consumer import consumer, main, sealer
from audit_consumer.batch import Batch
from audit_events import decode, row

NO_DIGEST = bytes(32)


def decode_only(msgs: list[Msg], checks: Any, epoch: int | None = None) -> Batch:
    out = Batch(msgs, epoch=epoch)
    for msg in msgs:
        seq = msg.metadata.sequence.stream
        out.rows.append(row(decode(msg.data), seq, None, NO_DIGEST, epoch))
        out.valid.append(msg)
    return out


async def idle(self: Any) -> None:
    await asyncio.Event().wait()


async def nothing(self: Any) -> None:
    return None


consumer.decode_batch = decode_only  # type: ignore[attr-defined]
sealer.Sealer.run = idle  # type: ignore[method-assign]
sealer.Sealer.seal = nothing  # type: ignore[method-assign]

if __name__ == "__main__":
    main.main()

"""UUIDv7 event ids (RFC 9562): time-ordered, so the primary key index stays append-mostly.

Python gains ``uuid.uuid7`` only in 3.14; this is the same layout for 3.11+.
"""

import os
import time
from uuid import UUID


def uuid7() -> UUID:
    """A random UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits, RFC 4122 variant."""
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 of them used
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b: 62 bits
    return UUID(int=value)

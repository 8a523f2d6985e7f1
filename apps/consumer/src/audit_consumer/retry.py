"""Waiting for a server that is still starting, bounded (``audit-setup`` runs beside its
servers in compose and as a Helm hook)."""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("audit.setup")
T = TypeVar("T")


async def until_up(what: str, attempt: Callable[[], Awaitable[T]], wait_seconds: float) -> T:
    """``attempt()`` until it succeeds, with jittered backoff, for at most ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for %s: %s", what, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5)

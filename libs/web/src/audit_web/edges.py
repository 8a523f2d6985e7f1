"""The HTTP edge of every service, bounded: uvicorn's httptools protocol with the limits it lacks.

uvicorn arms no timer on a new connection (a socket that never sends a byte stays open for
ever: 20,000 of them exhausted the process's file descriptors), caps neither the request head
(one 64 MB header was read into memory) nor the number of open connections. This protocol:

- closes a connection whose request head is not complete within ``<PREFIX>HEADER_TIMEOUT_SECONDS``
  of its first byte (or of the connection's opening);
- keeps an idle keep-alive connection between requests for ``<PREFIX>KEEP_ALIVE_SECONDS`` (75):
  longer than the proxies in front keep theirs (ingress-nginx and cloud load balancers: about
  60 s), so they never send a request into a socket the service just closed (a reset, answered
  502 — for a PATCH, which they do not retry);
- answers 431 and closes once a request head grows past ``<PREFIX>MAX_HEADER_BYTES``;
- beyond ``<PREFIX>MAX_CONNECTIONS`` per process, closes the oldest *idle* keep-alive connection
  to make room (so long idle connections cannot lock newcomers out), or, with none idle, the
  new one at once: the process keeps descriptors (and memory) for what it serves;
- at a graceful stop, keeps an idle keep-alive connection open ``<PREFIX>SHUTDOWN_IDLE_SECONDS``
  (3) instead of closing it at once (uvicorn's way): a proxy or client may be sending a request
  into it at that moment — a reset, a 502 for a PATCH. A request that arrives is answered with
  ``Connection: close``; new connections are refused from the start (a proxy retries those
  elsewhere), and what is still idle at the end is closed, by then out of every proxy's
  endpoints.
"""

import asyncio

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain\r\ncontent-length: 26\r\nconnection: close\r\n\r\n"
    b"request head is too large\n"
)


class EdgeLimits(BaseSettings):
    """The limits, from the environment under each service's prefix (:func:`bounded_http`)."""

    model_config = SettingsConfigDict(extra="ignore")

    header_timeout_seconds: float = Field(5.0, gt=0)
    keep_alive_seconds: float = Field(75.0, gt=0)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_connections: int = Field(2048, ge=8)
    shutdown_idle_seconds: float = Field(3.0, ge=0, le=8)  # within uvicorn's graceful 10 s


class Bounded(HttpToolsProtocol):
    """What :func:`bounded_http` returns: the protocol, and the limits it applies (uvicorn's own
    ``timeout_keep_alive`` must be given ``limits.keep_alive_seconds`` too)."""

    limits: EdgeLimits


def bounded_http(env_prefix: str) -> type[Bounded]:
    """The protocol class for ``uvicorn.run(http=...)``, its limits read from ``env_prefix``
    variables (``AUDIT_API_``: ``AUDIT_API_MAX_HEADER_BYTES``, …) when this is called: once per
    process, so put the result in a module attribute uvicorn's workers import."""
    limits = EdgeLimits(_env_prefix=env_prefix)
    idle: dict[HttpToolsProtocol, None] = {}  # idle keep-alive connections, oldest first

    class BoundedHttpTools(Bounded):
        """httptools with a head timeout, a head size cap and a connection cap (the module)."""

        _head_bytes = 0
        _tail = b""  # the last bytes of the head so far: its end may straddle two reads
        _head_timer: asyncio.TimerHandle | None = None
        _stopping = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                oldest = next(iter(idle), None)
                if oldest is None:
                    transport.close()  # connection_lost() removes it again
                    return
                del idle[oldest]
                oldest.transport.close()  # idle the longest: it makes room
            self._expect_head()

        def _expect_head(self) -> None:
            self._head_bytes, self._tail = 0, b""
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(limits.header_timeout_seconds, self._late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            """Measure the head before the parser sees it, so the bound is exact however the
            bytes arrive (a whole 64 KiB head in one read included)."""
            if self in idle:  # the next request begins: its head gets the head timeout
                del idle[self]
                self._expect_head()
            if self._head_timer is not None:  # waiting for (the rest of) a head
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                before = self._head_bytes - len(self._tail)  # head bytes ahead of ``seen``
                size = before + end + 4 if end >= 0 else self._head_bytes + len(data)
                if size > limits.max_header_bytes:
                    self._cancel_head_timer()
                    if not self.transport.is_closing():
                        self.transport.write(TOO_LARGE)
                        self.transport.close()
                    return
                self._head_bytes += len(data)
                self._tail = seen[-3:]
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            super().on_headers_complete()
            if self._stopping and self.cycle is not None:
                self.cycle.keep_alive = False  # a request during the stop: the last one

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # idle until the next request starts
                self._head_bytes, self._tail = 0, b""
                self._cancel_head_timer()
                self._head_timer = self.loop.call_later(limits.keep_alive_seconds, self._late)
                idle[self] = None

        def shutdown(self) -> None:
            """uvicorn's graceful stop: an idle connection lingers (the module says why)."""
            self._stopping = True
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # in flight: answered, then closed (uvicorn's)
            elif limits.shutdown_idle_seconds and not self.transport.is_closing():
                idle.pop(self, None)  # (never closed to make room now: no newcomers)
                self._cancel_head_timer()
                self._head_timer = self.loop.call_later(limits.shutdown_idle_seconds, self._late)
            else:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            idle.pop(self, None)
            super().connection_lost(exc)

    BoundedHttpTools.limits = limits
    return BoundedHttpTools

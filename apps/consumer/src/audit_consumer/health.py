"""A tiny HTTP server for probes, ``/healthz`` (liveness) and ``/readyz`` (readiness), and
``/metrics`` (Prometheus).

Liveness asks only "is the loop turning?" and never looks at PostgreSQL: a database outage must
not make Kubernetes restart consumers that are correctly waiting it out. Readiness says whether
this worker can do useful work now: NATS connected and the last database write succeeded.
"""

import asyncio
import json
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from audit_consumer.consumer import Consumer

log = logging.getLogger("audit.consumer.health")
MAX_CONNECTIONS = 64  # probes and scrapes; beyond it a connection is closed at once
REASONS = {200: "OK", 404: "Not Found", 431: "Request Header Fields Too Large", 503: "Unavailable"}


class HealthServer:
    """Serves probe endpoints for one :class:`Consumer` on ``host:port``."""

    def __init__(self, consumer: Consumer, host: str, port: int) -> None:
        self.consumer = consumer
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def status(self, path: str) -> tuple[int, dict[str, object]]:
        c = self.consumer
        idle = time.monotonic() - c.last_progress
        body: dict[str, object] = {
            "nats_connected": c.nats_connected,
            "db_ok": c.db_ok,
            "durable_ok": c.durable_ok,
            "seconds_since_progress": round(idle, 3),
            **c.stats.__dict__,
        }
        if path == "/healthz":
            return (200 if idle < c.settings.liveness_seconds else 503), body
        if path == "/readyz":
            return (200 if c.nats_connected and c.db_ok and c.durable_ok else 503), body
        return 404, {"error": "not found"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:  # bounded: idle sockets cannot take every descriptor
            writer.close()
            return
        self._open += 1
        try:
            try:
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except asyncio.LimitOverrunError:  # a head over the stream's 64 KiB limit
                log.info("probe request over 64 KiB answered 431")
                await self._answer(writer, 431, "application/json", b'{"error": "too large"}')
                return
            parts = request.split(b" ", 2)
            path = parts[1].decode("latin-1").split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                await self._answer(writer, 200, CONTENT_TYPE_LATEST, generate_latest())
            else:
                code, body = self.status(path)
                await self._answer(writer, code, "application/json", json.dumps(body).encode())
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # no complete request head within 5 s, or the peer went away
        finally:
            self._open -= 1
            writer.close()

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter, code: int, content_type: str, payload: bytes
    ) -> None:
        head = (
            f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()

"""The consumer's probe server answers what it can and refuses the rest in one line."""

import asyncio
import logging

import pytest

from audit_consumer.consumer import Consumer
from audit_consumer.health import HealthServer
from audit_consumer.settings import Settings
from audit_devservers import free_port


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_oversized_request_gets_431_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    server = HealthServer(Consumer(Settings()), "127.0.0.1", port)
    await server.start()
    try:
        with caplog.at_level(logging.DEBUG):
            big = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
            assert (await ask(port, big)).startswith(b"HTTP/1.1 431 ")
        assert [r.getMessage() for r in caplog.records] == [
            "probe request over 64 KiB answered 431"
        ]
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
        ok = await ask(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK")  # and it still serves
    finally:
        await server.stop()

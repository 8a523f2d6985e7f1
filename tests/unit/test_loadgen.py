"""The load generator survives what a rolling restart does to its connections: closed after an
answer, or with a request in flight (counted as unanswered), or refused while nothing listens."""

import argparse
import asyncio
from typing import Any

from bench import loadgen

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Length: 28\r\n%s\r\n{"audit_event_id": "abc-1"}\n'


async def serve(handled: list[int]) -> asyncio.Server:
    """Answers, closing every connection after its second request, and drops every fifth
    request unanswered."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for turn in range(2):
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(loadgen_body_length())
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            handled.append(1)
            if len(handled) % 5 == 0:
                break  # closed with the request unanswered
            writer.write(ANSWER % (b"Connection: close\r\n" if turn == 1 else b""))
            await writer.drain()
        writer.close()

    return await asyncio.start_server(connection, "127.0.0.1", 0)


def loadgen_body_length() -> int:
    return len(b'{"email": "x@example.com", "plan": "pro"}')


async def test_closed_and_unanswered_connections_are_replaced_and_counted() -> None:
    handled: list[int] = []
    server = await serve(handled)
    port = server.sockets[0].getsockname()[1]
    args = argparse.Namespace(
        host="127.0.0.1", port=port, method="PATCH", path="/accounts/{n}", token="t",
        concurrency=4, seconds=0.5, rate=0, ids=True,
    )  # fmt: skip
    result: dict[str, Any] = await loadgen.run(args)
    server.close()
    assert result["requests"] > 10
    assert result["unanswered"] >= 1  # the dropped ones: failed requests, not a crash
    assert result["requests"] + result["unanswered"] == len(handled)  # each counted once
    assert result["closed"] >= result["unanswered"]
    assert result["statuses"] == {200: result["requests"]}

"""A small HTTP/1.1 keep-alive load generator (its own process, uvloop), for ``make bench``.

Closed loop: ``--concurrency`` connections each send the next request as soon as the previous
answer arrived, for ``--seconds``. Open loop: ``--rate`` requests/s on a fixed schedule (the
end-to-end latency run). Prints one JSON object: requests/s, latency percentiles, status counts
and, with ``--ids``, ``[audit_event_id, unix time of the 200]`` pairs.

It survives what a rolling restart does to connections: a connection the server closes (after
an answer, or with a request in flight) is replaced, and counted — ``closed`` (connections the
server ended), ``unanswered`` (requests sent that got no answer: failed requests), ``refused``
(connection attempts refused while no server listened).
"""

import argparse
import asyncio
import json
import time

import uvloop

from bench.stats import percentiles


def request_bytes(method: str, path: str, host: str, token: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> tuple[int, bytes, bool]:
    """(status, body, whether the server will close the connection after this answer)."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, closing = 0, False
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
        elif line.lower() == b"connection: close":
            closing = True
    return status, await reader.readexactly(length), closing


async def run(args: argparse.Namespace) -> dict[str, object]:
    host, port = args.host, args.port
    body = b'{"email": "x@example.com", "plan": "pro"}' if args.method == "PATCH" else b""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acked: list[tuple[str, float]] = []
    deadline = time.perf_counter() + args.seconds
    interval = 1 / args.rate if args.rate else 0.0
    started = time.perf_counter()
    next_slot = [started]

    broken = {"closed": 0, "unanswered": 0, "refused": 0}

    async def connection(index: int) -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        n = 0
        while time.perf_counter() < deadline:
            if stream is None:
                try:
                    stream = await asyncio.open_connection(host, port)
                except OSError:
                    broken["refused"] += 1
                    await asyncio.sleep(0.05)
                    continue
            reader, writer = stream
            if interval:  # open loop: take the next slot on the shared schedule
                slot = next_slot[0]
                next_slot[0] += interval
                delay = slot - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            path = args.path.replace("{n}", f"{index}-{n}")
            n += 1
            t = time.perf_counter()
            try:
                status, answer, closing = await exchange(
                    reader, writer, request_bytes(args.method, path, host, args.token, body)
                )
            except (asyncio.IncompleteReadError, OSError):  # closed with the request in flight
                broken["unanswered"] += 1
                broken["closed"] += 1
                writer.close()
                stream = None
                continue
            if closing:
                broken["closed"] += 1
                writer.close()
                stream = None
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
            if args.ids and status == 200:
                acked.append((json.loads(answer)["audit_event_id"], time.time()))
        if stream is not None:
            stream[1].close()

    await asyncio.gather(*(connection(i) for i in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    p50, p99 = percentiles(latencies, 0.5, 0.99)
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        "statuses": statuses,
        **broken,
        "acked": acked if args.ids else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--method", default="PATCH")
    parser.add_argument("--path", default="/accounts/bench-{n}")
    parser.add_argument("--token", default="")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=0, help="open loop: requests per second")
    parser.add_argument("--ids", action="store_true", help="report audit ids with ack times")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()

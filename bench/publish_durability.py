"""Cost of ``sync_interval: always`` on the publish path: JetStream publish+ack latency and
throughput with the default fsync policy and with an fsync per write, on the same machine.

Run: ``make bench-durability`` (uv run python -m bench.publish_durability [--events N]).
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats

from audit_consumer.jetstream import provision
from audit_consumer.settings import Settings
from audit_devservers import NatsServer
from audit_events import AuditEvent, StreamNames, encode, uuid7
from bench.stats import percentiles


def sample_event() -> bytes:
    return encode(
        AuditEvent.model_validate(
            {
                "id": uuid7(),
                "occurred_at": "2026-11-25T12:00:00Z",
                "actor_type": "user",
                "actor_id": "bench",
                "action": "account.update",
                "resource_type": "account",
                "resource_id": "acc-1",
                "outcome": "success",
                "source_ip": "10.0.0.1",
                "metadata": {"method": "PATCH", "fields": ["email"]},
            }
        )
    )


async def measure(url: str, events: int, concurrency: int) -> tuple[float, float, float]:
    """(events/s, p50 ms, p99 ms) of publish-and-wait-for-ack at ``concurrency``."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    payload = sample_event()
    latencies: list[float] = []
    per_worker = events // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await js.publish(StreamNames().event_subject("account.update"), payload)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await nc.close()
    p50, p99 = percentiles(latencies, 0.5, 0.99)
    return len(latencies) / elapsed, p50, p99


async def run(events: int) -> list[str]:
    rows = [
        "| NATS fsync policy | concurrency | publishes/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for sync in (None, "always"):
        with tempfile.TemporaryDirectory() as tmp:
            server = NatsServer(Path(tmp), sync=sync)
            server.start()
            try:
                await provision(Settings(NATS_URL=server.url))
                for concurrency in (1, 32):
                    rate, p50, p99 = await measure(server.url, events, concurrency)
                    label = f"sync_interval: {sync}" if sync else "default (fsync every 2 min)"
                    rows.append(
                        f"| {label} | {concurrency} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |"
                    )
            finally:
                server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    args = parser.parse_args()
    print("\n".join(asyncio.run(run(args.events))))


if __name__ == "__main__":
    main()

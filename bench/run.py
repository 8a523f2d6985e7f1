"""``make bench``: the pipeline's throughput and latency against this machine's own ceilings,
measured in one run on the same data, reported as ratios (absolute numbers mean little on a
shared machine), with the CPU each process spent per event, which says what limits each
number. Prints a markdown table and writes ``bench-results/bench.json``.

``--quick`` (CI) runs the same steps on tiny inputs: it must finish and print, nothing more.
The measurements: ``ingest.py``, ``api.py``, ``queries.py``, ``retention.py``; the rig:
``rig.py``; the table: ``report.py``.
"""

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

from audit_consumer.database import migrate
from bench import api, ingest, queries, retention
from bench.common import BIN, ROOT, SECRET
from bench.report import table
from bench.rig import Bench


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.quick)
        bench.pg.start()
        bench.nats.start()
        try:
            await migrate(bench.settings)
            print(f"benchmark: {bench.n:,} events, {os.cpu_count()} CPUs", flush=True)
            await ingest.db_ceiling(bench, query_indexes=False)
            await ingest.db_ceiling(bench)
            await ingest.broker_ceiling(bench)
            await ingest.drain(bench, 1, integrity=False)
            await ingest.drain(bench, 1)
            await ingest.verify_speed(bench)
            await ingest.drain(bench, 2)
            await ingest.broker_shapes(bench)
            await ingest.per_message(bench)
            await api.api(bench, args.workers)
            await api.end_to_end(bench, args.workers)
            n, repeat = (20_000, 20) if bench.quick else (1_000_000, 200)
            await queries.run(bench, SECRET, n, repeat, BIN / "audit-query")
            await retention.run(bench, Path(tmp) / "archive")
            await retention.drain_while_removing(bench, Path(tmp) / "archive-2")
        finally:
            bench.nats.stop()
            bench.pg.stop()
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(bench.results, indent=2))
    print("\n" + table(bench.results, args.workers))
    print(f"\n(JSON: {out / 'bench.json'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs (CI smoke)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for the API")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

"""``make dev``: the whole pipeline on embedded servers, in one terminal, no Docker.

PostgreSQL and NATS keep their data in ``.dev/`` between runs. One ``audit-api`` and two
``audit-consumer`` processes run with their logs prefixed. Ctrl-C stops the apps first (so
consumers finish and ack their batch), then the servers. As in compose and the chart, only
setup gets the owner's database login, consumers their writer login, the API none.
"""

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from audit_api.auth import issue_token
from audit_api.settings import DEV_JWT_SECRET
from audit_consumer.settings import Settings
from audit_consumer.setup import run as setup
from audit_devservers import Child
from audit_devservers.servers import PG_BIN, NatsServer, PostgresServer

WRITER_LOGIN = "audit_consumer"  # created by audit-setup as a member of audit_writer

ROOT = Path.cwd()
BIN = Path(sys.executable).parent
LATEST_ROWS = (
    "SELECT occurred_at, actor_id, action, resource_id, outcome, source_ip"
    " FROM audit_events ORDER BY stream_seq DESC LIMIT 5"
)


def main() -> None:
    data = ROOT / ".dev"
    api_port = int(os.environ.get("AUDIT_API_PORT", "8000"))
    pg = PostgresServer(data / "postgres", port=int(os.environ.get("AUDIT_DEV_PG_PORT", "54329")))
    nats = NatsServer(
        data / "nats",
        port=int(os.environ.get("AUDIT_DEV_NATS_PORT", "4222")),
        monitor_port=int(os.environ.get("AUDIT_DEV_NATS_MONITOR_PORT", "8222")),
    )
    pg.start()
    nats.start()
    writer_url = pg.url.replace("postgresql://postgres@", f"postgresql://{WRITER_LOGIN}@")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AUDIT_JWT_SECRET")},
        "NATS_URL": nats.url,
        "PYTHONUNBUFFERED": "1",
    }
    api_env = {
        **env,
        "AUDIT_JWT_SECRET": DEV_JWT_SECRET,
        "AUDIT_DEV_MODE": "true",
        "AUDIT_API_PORT": str(api_port),
        "AUDIT_API_HOST": "127.0.0.1",
    }
    procs: list[Child] = []
    logging.basicConfig(level=logging.INFO, format="     setup | %(message)s")
    try:
        owner = Settings(
            DATABASE_URL=pg.url, NATS_URL=nats.url, AUDIT_WRITER_DATABASE_URL=writer_url
        )
        asyncio.run(setup("all", owner))
        procs.append(Child("api", [str(BIN / "audit-api")], api_env, "prefix").start(True))
        for i in (1, 2):
            consumer_env = {
                **env,
                "AUDIT_WRITER_DATABASE_URL": writer_url,
                "AUDIT_HEALTH_PORT": str(api_port + i),
            }
            argv = [str(BIN / "audit-consumer")]
            procs.append(Child(f"consumer-{i}", argv, consumer_env, "prefix").start(True))
        token = issue_token(DEV_JWT_SECRET, "dev-user")
        print(
            f"""
  audit pipeline is up (data in {data})
    API        http://127.0.0.1:{api_port}/docs
    consumers  http://127.0.0.1:{api_port + 1}/readyz  http://127.0.0.1:{api_port + 2}/readyz
    NATS       {nats.url}  (monitoring {nats.monitor_url}/jsz?consumers=true)
    Postgres   {pg.url}

  try it:
    export TOKEN={token}
    curl -s -X PATCH http://127.0.0.1:{api_port}/accounts/acc-1 \\
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{{"email": "new@example.com"}}'
    {PG_BIN / "psql"} {pg.url} -c '{LATEST_ROWS}'

  Ctrl-C stops everything.
""",
            flush=True,
        )
        while all(proc.running for proc in procs):
            time.sleep(0.5)
        print("a process exited on its own; stopping the rest", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        # Stop everything even if interrupted again: Ctrl-C reaches this process from the
        # terminal and once more through `uv run`, and an aborted cleanup leaves the servers
        # (own sessions, so the terminal's signal missed them) running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping apps...", flush=True)
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            proc.stop(30)
        nats.stop()
        pg.stop()
        print("stopped.", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()

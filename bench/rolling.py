"""``make bench-rolling``: a rolling restart of the API under load, seen by the client through
nginx configured as ingress-nginx runs it by default — upstream keep-alive (60 s),
``proxy_next_upstream error timeout`` (a refused connection goes to the next pod; a PATCH whose
request was already sent is never retried, so one sent into a closing socket is a 502).

Two API processes behind one nginx, ``bench.loadgen`` through nginx for the whole roll. Each
process in turn is restarted as Kubernetes restarts a pod, in two ways:

- ``drained`` — the chart's way (``api.drainSeconds``, a preStop sleep): the process leaves the
  balancer's endpoints first (as when Kubernetes removes a terminating pod's endpoint; ingress-nginx
  is told without a reload), keeps serving for the drain, then
  SIGTERM — it stops listening, finishes in-flight requests, lets idle keep-alive connections
  linger (``audit_web/edges.py``) — and a new process starts on its port and rejoins once ready;
- ``abrupt`` — SIGTERM while still routed (a pod without the preStop), to show what it buys.

Every 200 must be stored exactly once (the consumer runs throughout). Needs nginx and its Lua
module (Debian: ``apt install nginx libnginx-mod-http-lua``). Prints one JSON object per
measurement (with what nginx logged about its upstreams) and a markdown table.
"""

import argparse
import asyncio
import getpass
import json
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from audit_consumer.database import migrate
from audit_devservers import Child, free_port
from bench.common import BIN
from bench.rig import Bench

MODULES = Path("/usr/lib/nginx/modules")
NGINX = """\
{user}worker_processes 1;
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_lua_module.so;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    lua_shared_dict endpoints 1m;
    init_by_lua_block {{ ngx.shared.endpoints:set("list", "{ports}") }}
    upstream api {{
        server 0.0.0.1;  # placeholder: the balancer below picks, as ingress-nginx's does
        balancer_by_lua_block {{
            local endpoints, ports = ngx.shared.endpoints, {{}}
            for port in endpoints:get("list"):gmatch("%d+") do ports[#ports + 1] = port end
            -- a retry goes to the next endpoint, never back to the one that just failed
            local turn = ngx.ctx.turn and ngx.ctx.turn + 1 or endpoints:incr("turn", 1, 0)
            ngx.ctx.turn = turn
            local balancer = require "ngx.balancer"
            balancer.set_more_tries(1)
            assert(balancer.set_current_peer("127.0.0.1", tonumber(ports[turn % #ports + 1])))
        }}
        keepalive 320;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_timeout 75s;
        keepalive_requests 1000;
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
        }}
    }}
    server {{  # the endpoint list, replaced without a reload (ingress-nginx: /configuration)
        listen 127.0.0.1:{control};
        location = /endpoints {{
            content_by_lua_block {{
                ngx.req.read_body()
                ngx.shared.endpoints:set("list", ngx.req.get_body_data())
            }}
        }}
    }}
}}
"""


class Proxy:
    """nginx in front of the API processes, picking among the endpoints it was last given
    (:meth:`route`) as ingress-nginx does: Kubernetes' endpoint changes never reload it."""

    def __init__(self, root: Path, backends: list[int]) -> None:
        self.port, self.control = free_port(), free_port()
        conf = root / "nginx.conf"
        conf.write_text(
            NGINX.format(
                user=f"user {getpass.getuser()};\n" if os.geteuid() == 0 else "",
                modules=MODULES,
                dir=root,
                ports=",".join(map(str, backends)),
                port=self.port,
                control=self.control,
            )
        )
        self.child = Child("nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"], None)

    def route(self, to: list[int]) -> None:
        url = f"http://127.0.0.1:{self.control}/endpoints"
        body = ",".join(map(str, to)).encode()
        urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=5)


def roll(bench: Bench, proxy: Proxy, apis: dict[int, Child], drain: float) -> list[str]:
    """Restart each API process in turn, rejoining once ready. ``drain`` > 0: out of the
    endpoints first, SIGTERM ``drain`` seconds later (the chart's preStop); 0: SIGTERM at once,
    out of the endpoints a second later (Kubernetes removes a terminating pod's endpoint while
    the pod already stops, and ingress-nginx learns it at its next sync)."""
    steps = []
    for port, child in list(apis.items()):
        t = time.monotonic()
        others = [p for p in apis if p != port]
        if drain:
            proxy.route(others)
            time.sleep(drain)
            child.signal(child.stop_signal)
        else:
            child.signal(child.stop_signal)
            time.sleep(1)
            proxy.route(others)
        child.wait(30)
        apis[port] = Child(child.name, child.argv, child.env).start()
        bench.wait_http(port)
        proxy.route(list(apis))
        steps.append(f"{port} back in {time.monotonic() - t:.1f}s")
        time.sleep(2)  # serving on both again before the next one goes
    return steps


def upstream_errors(log: Path) -> dict[str, int]:
    """What nginx logged about its upstreams, by kind: a refused connect is retried on the next
    endpoint; a reset after the request was sent is a 502 for a PATCH."""
    kinds: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if found := re.search(r"\*\d+ (.+?) while ", line):
            kinds[found[1]] = kinds.get(found[1], 0) + 1
    return kinds


async def stored(bench: Bench, acked: set[str]) -> dict[str, int]:
    """Wait until every acknowledged event is a row; count rows and distinct ids among them."""
    async with await psycopg.AsyncConnection.connect(bench.pg.url, autocommit=True) as conn:
        for _ in range(1200):
            cur = await conn.execute("SELECT id::text FROM audit_events")
            ids = [i for (i,) in await cur.fetchall()]
            if acked <= set(ids):
                break
            await asyncio.sleep(0.1)
    return {
        "acked": len(acked),
        "acked_stored": len(acked & set(ids)),
        "rows": len(ids),
        "distinct_rows": len(set(ids)),
    }


async def measure(bench: Bench, root: Path, way: str, seconds: float) -> dict[str, Any]:
    await bench.reset()
    ports = [free_port(), free_port()]
    apis = {
        p: Child(
            f"api-{p}",
            [str(BIN / "audit-api")],
            bench.env(AUDIT_API_PORT=str(p), AUDIT_API_HOST="127.0.0.1"),
        )
        for p in ports
    }
    consumer_env = bench.env(AUDIT_HEALTH_PORT=str(free_port()), AUDIT_HEALTH_HOST="127.0.0.1")
    consumer = Child("consumer", [str(BIN / "audit-consumer")], consumer_env)
    proxy = Proxy(root, ports)
    for child in (*apis.values(), consumer, proxy.child):
        child.start()
    try:
        for port in ports:
            bench.wait_http(port)
        bench.wait_http(proxy.port)

        started = time.monotonic()

        async def rolled() -> list[str]:  # under load from its start to its end
            await asyncio.sleep(2)
            steps = await asyncio.to_thread(roll, bench, proxy, apis, 5 if way == "drained" else 0)
            if time.monotonic() - started > seconds:
                raise SystemExit(f"the roll outlasted the load: raise --seconds above {seconds}")
            return steps

        load = asyncio.to_thread(
            bench.loadgen, proxy.port, concurrency=32, seconds=seconds, ids=True
        )
        outcome, steps = await asyncio.gather(load, rolled())
        acked = {i for i, _ in outcome.pop("acked")}
        result = {"way": way, **outcome, "steps": steps, **await stored(bench, acked)}
        result["nginx_errors"] = upstream_errors(root / "error.log")
        result["failed"] = result["unanswered"] + sum(
            n for status, n in result["statuses"].items() if status != "200"
        )
        return result
    finally:
        for child in (proxy.child, *apis.values(), consumer):
            child.stop()


async def main_async(args: argparse.Namespace) -> None:
    if not (MODULES / "ngx_http_lua_module.so").exists():
        raise SystemExit("needs nginx and its Lua module: apt install nginx libnginx-mod-http-lua")
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), quick=False)
        bench.pg.start()
        bench.nats.start()
        results = []
        try:
            await migrate(bench.settings)
            for n in range(args.rounds):
                for way in args.ways.split(","):
                    proxy_dir = Path(tmp) / f"nginx-{way}-{n}"
                    proxy_dir.mkdir()
                    result = await measure(bench, proxy_dir, way, args.seconds)
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            bench.nats.stop()
            bench.pg.stop()
    print("\n| way | requests | req/s | non-200 | unanswered | failed | acked = stored once |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        other = sum(n for s, n in r["statuses"].items() if s != "200")
        once = r["acked"] == r["acked_stored"] and r["rows"] == r["distinct_rows"]
        print(
            f"| {r['way']} | {r['requests']:,} | {r['rps']:,.0f} | {other} | {r['unanswered']}"
            f" | {r['failed']} | {r['acked']:,} {'yes' if once else 'NO'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="load per measurement")
    parser.add_argument("--ways", default="drained,abrupt")
    parser.add_argument("--rounds", type=int, default=2, help="drained and abrupt, alternating")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The distributed shapes users run in production, on one machine: a NATS cluster (JetStream on
every node, routes between them) and a PostgreSQL primary with a synchronous streaming standby.

NATS nodes get distinct loopback addresses (127.0.0.1, .2, .3) and the *same* ports, as pods of
a StatefulSet do: KEDA's scaler finds a durable's leader by a node's host name plus the one
monitoring port, and this layout lets it (tests/chart/test_keda_compat.py). Routes authenticate
with a password of their own; clients with the project's identities, on any node.

The standby is synchronous (``synchronous_standby_names`` on the primary, ``remote_apply``), so
a COMMIT the consumer acks after is on both servers; or asynchronous, to measure what that
loses. The setting is passed to the primary's process only (``-c``), never written into its
data directory, so a promoted standby does not inherit it — a promoted standby that still
waited for a standby of its own would hang every commit. A :class:`DelayLine` puts a network
between them (latency, and a link that can die with the primary's zone).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from audit_devservers.servers import PG_BIN, NatsServer, PostgresServer, _wait, as_non_root
from audit_events import StreamNames


def _free_everywhere(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (nodes share their ports, as pods do)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no port free on all of {hosts}")


class NatsCluster:
    """``size`` nats-server nodes ``n1``… on 127.0.0.1… with routes between all of them."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        sync: str | None = None,
        auth: dict[str, str] | None = None,
        names: StreamNames | None = None,
    ) -> None:
        hosts = [f"127.0.0.{i}" for i in range(1, size + 1)]
        port, monitor, route = (_free_everywhere(hosts) for _ in range(3))
        self.route_password = secrets.token_urlsafe(18)
        routes = ", ".join(f"nats-route://route:{self.route_password}@{h}:{route}" for h in hosts)
        self.nodes = [
            NatsServer(
                root / f"n{i}",
                port,
                sync,
                monitor,
                auth,
                names,
                host=host,
                cluster=(
                    f'server_name: "n{i}"\n'
                    f"cluster {{\n  name: audit\n  listen: {host}:{route}\n"
                    f'  authorization {{ user: route, password: "{self.route_password}" }}\n'
                    f"  routes: [{routes}]\n}}\n"
                ),
            )
            for i, host in enumerate(hosts, start=1)
        ]
        self.port, self.monitor_port = port, monitor

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (``NATS_URL``)."""
        return ",".join(node.url for node in self.nodes)

    def url_as(self, user: str) -> str:
        return ",".join(node.url_as(user) for node in self.nodes)

    def node(self, name: str) -> NatsServer:
        """The node whose server_name is ``name`` (``n1``…), as JetStream names leaders."""
        return self.nodes[int(name.removeprefix("n")) - 1]

    def start(self) -> None:
        """Start every node, then wait until JetStream's meta group has a leader."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every running node reports JetStream healthy (meta leader known, assets current)."""
        deadline = time.monotonic() + timeout
        for node in (n for n in self.nodes if n.running):
            while not _healthy(node):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats {node.host} not healthy within {timeout}s")
                time.sleep(0.1)


def _healthy(node: NatsServer) -> bool:
    try:
        with urllib.request.urlopen(f"{node.monitor_url}/healthz", timeout=1) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


class PostgresStandby(PostgresServer):
    """A streaming standby of ``primary``, cloned with ``pg_basebackup``; :meth:`promote` makes
    it the primary. ``via``: the port it streams WAL through (a :class:`DelayLine`), if not
    straight from the primary."""

    def __init__(
        self, root: Path, primary: PostgresServer, name: str = "standby1", via: int | None = None
    ) -> None:
        port = via or primary.port
        conninfo = f"host=127.0.0.1 port={port} user=postgres application_name={name}"
        self.line: DelayLine | None = None  # the link it streams over, when it is a DelayLine
        super().__init__(root, settings={"primary_conninfo": conninfo, "hot_standby": "on"})
        self.primary, self.application_name = primary, name

    def initialise(self) -> None:
        subprocess.run(
            [*as_non_root(), str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1",
             "-p", str(self.primary.port), "-U", "postgres", "-D", str(self.data),
             "-X", "stream", "--checkpoint=fast"],
            check=True, capture_output=True,
        )  # fmt: skip
        (self.data / "standby.signal").touch()

    def promote(self) -> None:
        """Promote to primary and wait until it takes writes (its settings carry no
        ``synchronous_standby_names``: its commits do not wait for a standby it lacks)."""
        assert self.proc is not None
        self.psql("SELECT pg_promote(true, 60)")
        _wait(lambda: self.psql("SELECT pg_is_in_recovery()") == "f", "promote", 60, self.proc)


def primary_with_standby(
    root: Path, synchronous: bool = True, via: int | None = None
) -> tuple[PostgresServer, PostgresStandby]:
    """A primary whose commits wait until its standby has applied them, and that standby
    (``synchronous=False``: the primary does not wait; what that loses is measured in
    docs/reliability.md). ``via``: the standby streams through this port (a delay line)."""
    waits = {"synchronous_standby_names": "standby1", "synchronous_commit": "remote_apply"}
    primary = PostgresServer(root / "primary", settings=waits if synchronous else {})
    return primary, PostgresStandby(root / "standby", primary, via=via)


class DelayLine:
    """A TCP relay on 127.0.0.1 that hands every byte on ``delay`` seconds after it arrived, in
    order, at full throughput: the network between a primary and a standby in another zone.
    It runs its own event loop in a thread, so a caller blocked on a commit that waits for the
    standby cannot stall it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.target_port = 0  # set before anything connects
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
            self.port = int(server.sockets[0].getsockname()[1])
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="delay-line", daemon=True)
        self.thread.start()
        started.wait(10)

    cut_off = False

    def cut(self) -> None:
        """The link fails: whatever is still on it never arrives (a zone lost with its primary)."""
        self.cut_off = True

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                if data:
                    await asyncio.sleep(max(0.0, due - loop.time()))
                if not data or self.cut_off:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await src.read(65536):
                line.put_nowait((loop.time() + self.delay, data))
        finally:
            line.put_nowait((loop.time() + self.delay, b""))
            await sender


def multi_host_url(*servers: PostgresServer, user: str = "postgres", password: str = "") -> str:
    """One libpq URL naming every server, connecting to whichever takes writes now
    (``target_session_attrs=read-write``): what makes a failover transparent to clients."""
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    secret = f":{password}" if password else ""
    return f"postgresql://{user}{secret}@{hosts}/postgres?target_session_attrs=read-write"

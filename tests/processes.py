"""Real ``audit-api``, ``audit-consumer`` and ``audit-query`` child processes for end-to-end,
fault and browser tests."""

import time
import urllib.request
from pathlib import Path

from audit_devservers import Child, free_port
from audit_events.broker import API, CONSUMER, QUERY
from audit_events.seals import SealKey
from tests.env import BIN, SEAL_KEY, identity_env


class Service(Child):
    """One console script as a child process, its output in a log file, probed over HTTP."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, logs: Path):
        super().__init__(name, argv, env, log=logs / f"{name}.log")
        self.port = port
        self.log_path = logs / f"{name}.log"

    def get(self, path: str) -> tuple[int, bytes]:
        """HTTP status and body of ``path`` on this service; ``(0, b"")`` if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def probe(self, path: str) -> int:
        """HTTP status of ``path`` on this service, 0 if it does not answer."""
        return self.get(path)[0]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.probe("/readyz") != 200:
            assert self.proc is not None
            assert self.proc.poll() is None, self.logs()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout}s\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def api(env: dict[str, str], logs: Path) -> Service:
    port = free_port()
    env = {**identity_env(API), **env, "AUDIT_API_PORT": str(port), "AUDIT_API_HOST": "127.0.0.1"}
    return Service("api", [str(BIN / "audit-api")], env, port, logs)


def consumer(env: dict[str, str], logs: Path, index: int) -> Service:
    port = free_port()
    env = {
        **identity_env(CONSUMER),
        "AUDIT_SEAL_KEY": SEAL_KEY,
        **env,
        "AUDIT_HEALTH_PORT": str(port),
        "AUDIT_HEALTH_HOST": "127.0.0.1",
    }
    return Service(f"consumer-{index}", [str(BIN / "audit-consumer")], env, port, logs)


def query(env: dict[str, str], logs: Path, reader_url: str) -> Service:
    """``audit-query`` reading through ``reader_url`` (an audit_reader login)."""
    port = free_port()
    env = {
        **identity_env(QUERY),
        **env,
        "AUDIT_READER_DATABASE_URL": reader_url,
        "AUDIT_SEAL_PUBLIC_KEYS": SealKey(SEAL_KEY).public_text(),
        "AUDIT_QUERY_PORT": str(port),
        "AUDIT_QUERY_HOST": "127.0.0.1",
    }
    return Service("query", [str(BIN / "audit-query")], env, port, logs)

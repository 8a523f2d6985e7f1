"""Container smoke test (``make docker-smoke``, run by CI): build both images, start the
project's own docker-compose.yaml (only the services that have images on this machine), send
authenticated requests, check the rows, crash a consumer container and check Docker restarts it
and nothing is lost, then tear everything down.

Exit codes: 0 passed (or loudly SKIPPED when no Docker engine can run here), 1 failed.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from audit_events import keygen
from audit_events.auth import issue_token

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT.parent / "shared" / "tools" / "docker-standins"
PROJECT = "auditsmoke"
SERVICES = ["postgres", "nats", "setup", "api", "consumer", "query"]  # no Jaeger/Prometheus
SECRET = "smoke-secret-" + os.urandom(16).hex()
API = "http://127.0.0.1:8000"
NATS_IMAGE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["nats"]["image"]


def sh(*argv: str, check: bool = True, capture: bool = False) -> str:
    print("+", " ".join(argv), flush=True)
    done = subprocess.run(argv, cwd=ROOT, check=False, text=True, capture_output=capture)
    if check and done.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(argv)} exited {done.returncode}\n{done.stderr or ''}")
    return done.stdout or ""


def compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit("FAILED: neither `docker compose` nor `docker-compose` is available")


def engine() -> bool:
    """Start the stand-in engine and images where this machine needs them; False = skip."""
    if STANDINS.exists():
        # Outside this venv: the script runs `python3 -m pip`, which uv's venvs do not have.
        path = os.pathsep.join(
            p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)
        )
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
        rc = subprocess.run(
            [
                str(STANDINS),
                "--python",
                "python:3.13-slim",
                "--postgres",
                "postgres:17",
                "--nats",
                NATS_IMAGE,
            ],
            env=env,
        ).returncode
        if rc == 3:
            return False
        if rc != 0:
            raise SystemExit(f"FAILED: docker-standins exited {rc}")
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def request(method: str, path: str, body: dict[str, object] | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {issue_token(SECRET, 'smoke')}"}
    try:
        return httpx.request(method, API + path, json=body, headers=headers, timeout=10)
    except httpx.TransportError:
        return httpx.Response(0)


def wait(what: str, check: "object", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: {what} not within {timeout}s")
        time.sleep(0.5)


def psql(compose: list[str], sql: str) -> str:
    return sh(
        *compose,
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "audit",
        "-d",
        "audit",
        "-Atc",
        sql,
        capture=True,
    ).strip()


def send(n: int, prefix: str) -> list[str]:
    ids = []
    for i in range(n):
        response = request("PATCH", f"/accounts/{prefix}-{i}", {"plan": "pro"})
        assert response.status_code == 200, f"request {i}: HTTP {response.status_code}"
        ids.append(str(response.json()["audit_event_id"]))
    return ids


def stored(compose: list[str]) -> list[str]:
    return psql(compose, "SELECT id FROM audit_events").split()


ATTACKS = """
import asyncio, os, nats
async def attempt(**auth):
    errors = []
    async def on_error(exc):
        errors.append(str(exc).lower())
    try:
        nc = await nats.connect("nats://nats:4222", allow_reconnect=False, connect_timeout=3,
                                error_cb=on_error, **auth)
    except Exception as exc:
        return "refused: " + str(exc).lower()
    for subject in ("$JS.API.CONSUMER.MSG.NEXT.AUDIT.audit-writer", "$JS.API.STREAM.DELETE.AUDIT"):
        try:
            await nc.request(subject, b"", timeout=1)
        except Exception:
            pass
    await nc.close()
    return " | ".join(errors)
async def main():
    print("ANON", await attempt())
    print("API", await attempt(user="audit-api", password=os.environ["AUDIT_NATS_PASSWORD"]))
asyncio.run(main())
"""


def broker_attacks(compose: list[str]) -> None:
    """Inside the compose network: an anonymous client gets nothing, the API's identity can
    neither pull from the durable nor delete the stream."""
    out = sh(*compose, "exec", "-T", "api", "python", "-c", ATTACKS, capture=True)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert "authorization violation" in lines["ANON"], out
    for subject in ("consumer.msg.next.audit.audit-writer", "stream.delete.audit"):
        assert f'permissions violation for publish to "$js.api.{subject}' in lines["API"], out
    assert stored(compose), "the stream must still be there"


def main() -> None:
    started = time.monotonic()
    if not engine():
        print(
            "\n" + "=" * 70 + "\nSKIPPED: container smoke test — no Docker engine can run on this"
            " machine (docker-standins exit 3)\n" + "=" * 70
        )
        return
    compose = [*compose_cmd(), "-p", PROJECT]
    os.environ.update(keygen.generate(), AUDIT_JWT_SECRET=SECRET)
    sizes = {}
    for app, port in (("api", "8000"), ("consumer", "8001"), ("query", "8080"), ("verify", "9102")):
        t = time.monotonic()
        sh(
            "docker",
            "build",
            "--network",
            "host",
            "-q",
            "--build-arg",
            f"APP={app}",
            "--build-arg",
            f"PORT={port}",
            "-t",
            f"audit-{app}:dev",
            ".",
        )
        size = sh("docker", "image", "inspect", "-f", "{{.Size}}", f"audit-{app}:dev", capture=True)
        sizes[app] = f"{int(size) / 1e6:.0f} MB, built in {time.monotonic() - t:.0f}s"
    try:
        sh(*compose, "down", "-v", "--remove-orphans", check=False)
        sh(*compose, "up", "-d", "--no-build", *SERVICES)
        wait("API ready", lambda: request("GET", "/readyz").status_code == 200)
        ids = send(50, "smoke")
        wait("50 rows", lambda: len(stored(compose)) >= 50)
        assert sorted(stored(compose)) == sorted(ids), "rows differ from acknowledged events"
        row = psql(
            compose,
            "SELECT actor_id, action, resource_id, outcome FROM audit_events"
            " WHERE resource_id = 'smoke-7'",
        )
        assert row == "smoke|account.update|smoke-7|success", row
        broker_attacks(compose)

        # Crash one consumer (SIGKILL its process from the host, as the OOM killer would).
        victim = (
            f"{PROJECT}_consumer_1" if compose[0] == "docker-compose" else f"{PROJECT}-consumer-1"
        )
        pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", victim, capture=True).strip()
        sh("kill", "-9", pid)
        more = send(50, "after-kill")
        wait(
            "consumer restarted",
            lambda: (
                sh("docker", "inspect", "-f", "{{.RestartCount}}", victim, capture=True).strip()
                not in ("", "0")
            ),
        )
        wait("100 rows", lambda: len(stored(compose)) >= 100)
        rows = stored(compose)
        assert sorted(rows) == sorted(ids + more), "lost or doubled events after the crash"

        # audit-verify as the compose `verify` profile runs it (read-only login, public key):
        # intact once every row is sealed, and it names a row the owner changes.
        verify = [*compose, "--profile", "verify", "run", "--rm", "--no-deps", "-T", "verify"]
        check = [*verify, "audit-verify", "--grace", "0"]
        wait(
            "audit-verify: intact",
            lambda: subprocess.run(check, capture_output=True).returncode == 0,
        )
        psql(compose, "UPDATE audit_events SET actor_id = 'mallory' WHERE resource_id = 'smoke-7'")
        found = subprocess.run(check, capture_output=True, text=True)
        assert found.returncode == 1, found.stdout + found.stderr
        assert ": altered" in found.stdout, found.stdout

        # The read side: audit-query with its own login and a reader token; the dead letters.
        query = "http://127.0.0.1:8080"
        wait("query ready", lambda: httpx.get(f"{query}/readyz", timeout=2).status_code == 200)
        reader = {"Authorization": f"Bearer {issue_token(SECRET, 'smoke', scope='audit:read')}"}
        answer = httpx.get(f"{query}/audit-events?resource_id=smoke-7", headers=reader, timeout=10)
        assert answer.status_code == 200, answer.text
        assert [i["actor_id"] for i in answer.json()["items"]] == ["mallory"], answer.text
        assert httpx.get(f"{query}/audit-events", timeout=10).status_code == 401
        wait(
            "the read recorded",
            lambda: (
                "audit.query"
                in psql(compose, "SELECT action FROM audit_events WHERE action LIKE 'audit.%'")
            ),
        )
        dlq = [*compose, "--profile", "tools", "run", "--rm", "--no-deps", "-T", "dlq", "list"]
        listed = subprocess.run(dlq, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        took = time.monotonic() - started
        print(
            f"\nPASSED container smoke in {took:.0f}s: 100 acknowledged = 100 rows,"
            f" consumer restarted by Docker, audit-verify intact then naming the altered row,"
            f" audit-query answering and recording its read, audit-dlq listing;"
            f" images: {sizes}"
        )
    except BaseException:
        sh(*compose, "logs", "--tail", "40", check=False)
        raise
    finally:
        sh(*compose, "down", "-v", "--remove-orphans", check=False)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)

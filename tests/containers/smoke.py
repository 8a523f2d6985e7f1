"""Container smoke test (``make docker-smoke``, run by CI): ``make docker-up`` as README says
(only the services that have images on this machine, on host ports that are not the defaults),
the lines it prints run pasted into a shell, authenticated requests, the rows checked, a consumer
container crashed and Docker seen to restart it with nothing lost, then everything torn down.

Exit codes: 0 passed (or loudly SKIPPED when no Docker engine can run here), 1 failed.
"""

import json
import os
import re
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
IMAGES = ("api", "consumer", "query", "verify", "retention")
SERVICES = ["postgres", "nats", "setup", "api", "consumer", "query"]  # no Jaeger/Prometheus
SECRET = "smoke-secret-" + os.urandom(16).hex()
# Not the defaults: the readiness wait and every printed line must follow the settings.
PORTS = {
    "AUDIT_API_HOST_PORT": "18000",
    "AUDIT_QUERY_HOST_PORT": "18080",
    "AUDIT_NATS_MONITOR_HOST_PORT": "18222",
}
API = f"http://127.0.0.1:{PORTS['AUDIT_API_HOST_PORT']}"
QUERY = f"http://127.0.0.1:{PORTS['AUDIT_QUERY_HOST_PORT']}"
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
    """The acknowledged events' rows (not audit-query's records of its reads)."""
    return psql(compose, "SELECT id FROM audit_events WHERE action NOT LIKE 'audit.%'").split()


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


def image_size(image: str) -> str:
    size = sh("docker", "image", "inspect", "-f", "{{.Size}}", image, capture=True)
    return f"{int(size) / 1e6:.0f} MB"


def docker_up() -> list[str]:
    """``make docker-up`` as a user runs it; returns the lines it printed once ready."""
    env = (
        os.environ
        | PORTS
        | {"COMPOSE_PROJECT_NAME": PROJECT, "DOCKER_SERVICES": " ".join(SERVICES)}
    )
    print("+ make docker-up", flush=True)
    done = subprocess.run(
        ["make", "docker-up"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE
    )
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"FAILED: make docker-up exited {done.returncode}")
    _, ready = done.stdout.split("waiting for the API and the consumers to be ready...", 1)
    return [line.strip() for line in ready.splitlines() if line.strip()]


def paste(*lines: str) -> str:
    """Lines as a user pastes them into a shell (bash, stopping at the first failure)."""
    env = os.environ | {"COMPOSE_PROJECT_NAME": PROJECT}
    script = "set -euo pipefail\n" + "\n".join(lines)
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, text=True, capture_output=True)
    assert done.returncode == 0, (
        f"pasted lines failed ({done.returncode}):\n{script}\n{done.stderr}"
    )
    return done.stdout


def printed_lines_work(compose: list[str], lines: list[str]) -> str:
    """Every URL make docker-up printed answers; its token, curl and psql lines run pasted; the
    reader token it printed reads the log. Returns the id the pasted curl was answered with."""
    urls = [
        u
        for line in lines
        if not line.startswith("curl")
        for u in re.findall(r"http://\S+[^\s,)]", line)
    ]
    assert {API + "/docs", QUERY + "/docs"} <= set(urls), lines
    for url in urls:
        assert httpx.get(url, timeout=10).status_code == 200, url
    shell = {line.split(" ", 1)[0]: line for line in lines if line.startswith(("export ", "curl "))}
    psql_line = next(line for line in lines if " exec -T postgres psql " in line)
    answer = paste(shell["export"], shell["curl"])
    assert '"audit_event_id"' in answer, answer
    wait("acc-1 stored", lambda: "acc-1" in psql(compose, "SELECT resource_id FROM audit_events"))
    assert "acc-1" in paste(psql_line), psql_line
    reader = next(line for line in lines if line.startswith("reader token")).split(": ", 1)[1]
    read = httpx.get(f"{QUERY}/audit-events", headers={"Authorization": f"Bearer {reader}"})
    assert read.status_code == 200, read.text
    return str(json.loads(answer)["audit_event_id"])


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
    try:
        sh(*compose, "down", "-v", "--remove-orphans", check=False)
        lines = docker_up()
        sizes = {app: image_size(f"audit-{app}:dev") for app in IMAGES}
        pasted = printed_lines_work(compose, lines)
        wait("API ready", lambda: request("GET", "/readyz").status_code == 200)
        ids = [pasted, *send(49, "smoke")]
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
        wait("query ready", lambda: httpx.get(f"{QUERY}/readyz", timeout=2).status_code == 200)
        reader = {"Authorization": f"Bearer {issue_token(SECRET, 'smoke', scope='audit:read')}"}
        answer = httpx.get(f"{QUERY}/audit-events?resource_id=smoke-7", headers=reader, timeout=10)
        assert answer.status_code == 200, answer.text
        assert [i["actor_id"] for i in answer.json()["items"]] == ["mallory"], answer.text
        assert httpx.get(f"{QUERY}/audit-events", timeout=10).status_code == 401
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
            f"\nPASSED container smoke in {took:.0f}s: make docker-up's printed lines ran pasted,"
            f" 100 acknowledged = 100 rows,"
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

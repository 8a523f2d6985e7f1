"""End to end on a real kind cluster (``make kind-up`` first; skipped without a cluster).

Waits for the rollout, drives load through the NodePort on 127.0.0.1:8000, watches the consumer
Deployment scale above its minimum (KEDA on the durable's lag) and back, and checks that the row
count equals the events acknowledged. Run: ``make kind-e2e`` (sets AUDIT_KIND_E2E=1).
"""

import asyncio
import base64
import os
import time
from typing import Any

import httpx
import pytest

from audit_events.auth import issue_token

NAMESPACE = os.environ.get("AUDIT_KIND_NAMESPACE", "audit")
RELEASE = os.environ.get("AUDIT_KIND_RELEASE", "audit")  # fullname == release name here
API = os.environ.get("AUDIT_KIND_API", "http://127.0.0.1:8000")

pytestmark = pytest.mark.skipif(
    os.environ.get("AUDIT_KIND_E2E") != "1", reason="needs a kind cluster: make kind-up kind-e2e"
)


@pytest.fixture(scope="module")
def k8s() -> Any:
    kubernetes = pytest.importorskip("kubernetes")
    try:
        kubernetes.config.load_kube_config()
    except Exception as exc:
        pytest.skip(f"no kubeconfig: {exc}")
    return kubernetes.client


def wait_available(apps: Any, name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = apps.read_namespaced_deployment(name, NAMESPACE)
        if (d.status.available_replicas or 0) >= 1 and d.status.updated_replicas:
            return
        time.sleep(2)
    raise AssertionError(f"{name} not available in {timeout}s")


def replicas(apps: Any) -> int:
    return int(apps.read_namespaced_deployment(f"{RELEASE}-consumer", NAMESPACE).spec.replicas or 0)


def row_count(k8s: Any) -> int:
    from kubernetes.stream import stream

    out = stream(
        k8s.CoreV1Api().connect_get_namespaced_pod_exec,
        f"{RELEASE}-postgresql-0",
        NAMESPACE,
        command=["psql", "-U", "audit", "-d", "audit", "-Atc", "SELECT count(*) FROM audit_events"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return int(out.strip())


async def drive(token: str, seconds: float, concurrency: int = 32) -> list[str]:
    acked: list[str] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=API, timeout=10) as client:

        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                r = await client.patch(
                    f"/accounts/k-{w}-{i}",
                    json={"plan": "pro"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                i += 1
                if r.status_code == 200:
                    acked.append(r.json()["audit_event_id"])

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return acked


async def test_consumers_scale_out_on_lag_and_back_and_nothing_is_lost(k8s: Any) -> None:
    apps = k8s.AppsV1Api()
    for name in (f"{RELEASE}-api", f"{RELEASE}-consumer", f"{RELEASE}-query"):
        wait_available(apps, name)
    secret = k8s.CoreV1Api().read_namespaced_secret(f"{RELEASE}-secrets", NAMESPACE)
    token = issue_token(base64.b64decode(secret.data["AUDIT_JWT_SECRET"]).decode(), "kind-e2e")
    scaled = k8s.CustomObjectsApi().get_namespaced_custom_object(
        "keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", f"{RELEASE}-consumer"
    )
    minimum = scaled["spec"]["minReplicaCount"]
    before = row_count(k8s)

    peak = replicas(apps)
    load = asyncio.create_task(drive(token, seconds=90))
    while not load.done():  # watch the Deployment while the backlog builds
        peak = max(peak, replicas(apps))
        await asyncio.sleep(2)
    acked = await load
    assert acked, "no request was acknowledged"
    assert peak > minimum, f"consumers never scaled above {minimum} (peak {peak})"

    deadline = time.monotonic() + 600
    while row_count(k8s) - before < len(acked):
        assert time.monotonic() < deadline, "acknowledged events missing"
        await asyncio.sleep(2)
    assert row_count(k8s) - before == len(acked)  # nothing lost, nothing doubled
    while replicas(apps) > minimum:  # and back in once drained (cooldown + stabilization)
        assert time.monotonic() < deadline, "consumers did not scale back in"
        await asyncio.sleep(5)

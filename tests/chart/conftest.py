"""Rendering the Helm chart with the helm binary from ../shared/tools/get-helm (or PATH)."""

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.chart.rendering import CHART, SHARED, VALUES, Render


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def helm() -> str:
    found = shutil.which("helm")
    getter = SHARED / "tools" / "get-helm"
    if not found and getter.exists():
        out = subprocess.run([str(getter)], capture_output=True, text=True)
        found = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else None
    if not found:
        _missing("helm")
    return str(found)


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """``render("kind", "--set", "x=y")`` → the rendered objects (hooks and tests included)."""

    def run(values: str = "default", *extra: str) -> list[dict[str, Any]]:
        argv = [helm, "template", "audit", str(CHART), "--namespace", "audit", *VALUES[values]]
        done = subprocess.run([*argv, *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    return run

"""/docs in a real browser (Debian's chromium) on a network where only this machine exists:
Swagger UI must render from the app's own assets, with an "Authorize" button for the token."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from audit_consumer.settings import Settings
from tests.env import service_env
from tests.processes import api


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs Debian's package)")
        pytest.skip("chromium not installed (apt install chromium)")
    return found


def rendered(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran; every host but 127.0.0.1 unresolvable (no CDN)."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_swagger_ui_renders_offline_with_an_authorize_button(
    streams: Settings, tmp_path: Path
) -> None:
    server = api(service_env(streams), tmp_path).start()
    try:
        server.wait_ready()
        dom = rendered(f"http://127.0.0.1:{server.port}/docs", tmp_path / "profile")
    finally:
        server.stop()
    assert "btn authorize" in dom  # the bearer scheme is declared
    assert "/accounts/{account_id}" in dom  # the operations were rendered by Swagger UI's JS

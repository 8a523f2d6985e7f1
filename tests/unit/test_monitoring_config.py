"""The Prometheus config and alert rules shipped with compose pass ``promtool``, and the Grafana
dashboard only queries metrics the apps really export."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.env import JWT_SECRET, ROOT

CONFIG = ROOT / "config"


def promtool() -> str:
    found = shutil.which("promtool") or str(ROOT / ".tools" / "bin" / "promtool")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("promtool missing: .ci/run runs `make promtool` first")
        pytest.skip("promtool not installed: `make promtool`")
    return found


def test_alert_rules_pass_promtool() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(CONFIG / "alerts.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "18 rules found" in done.stdout


def test_dead_letter_alert_fires_on_the_first_dead_letter_of_a_process() -> None:
    """config/alerts.test.yml: a series exported at 0 then 1 fires; one born at 1 would not."""
    done = subprocess.run(
        [promtool(), "test", "rules", str(CONFIG / "alerts.test.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_label_set_an_alert_watches_exists_at_zero_from_the_start() -> None:
    """In a fresh process (this one's registry has seen other tests' traffic): the consumer's
    results and the API's failure reasons are exported at 0 before anything happened."""
    script = (
        "from prometheus_client import generate_latest\n"
        "import audit_consumer.metrics\n"
        "from audit_api.main import create_app\n"
        "from audit_api.settings import Settings\n"
        f"create_app(Settings(AUDIT_JWT_SECRET={JWT_SECRET!r}))\n"
        "print(generate_latest().decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for result in ("stored", "duplicate", "dead_lettered"):
        assert f'audit_consumer_messages_total{{result="{result}"}} 0.0' in text
    for reason in ("not_connected", "timeout", "error"):
        assert f'audit_api_publish_failures_total{{reason="{reason}"}} 0.0' in text
    assert 'route="/accounts/{account_id}",status="503"} 0.0' in text


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # The config names the rules file by its path inside the container; point it here.
    config = (
        (CONFIG / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/alerts.yml", str(CONFIG / "alerts.yml"))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    done = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_metrics() -> set[str]:
    names = set()
    for module in (
        "apps/api/src/audit_api/metrics.py",
        "apps/consumer/src/audit_consumer/metrics.py",
        "apps/verify/src/audit_verify/cli.py",
        "apps/query/src/audit_query/metrics.py",
    ):
        names |= set(re.findall(r'"(audit_[a-z_]+)"', (ROOT / module).read_text()))
    return names


def test_dashboard_and_alerts_use_real_metric_names() -> None:
    dashboard = json.loads((CONFIG / "grafana" / "dashboards" / "audit-pipeline.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries.append((CONFIG / "alerts.yml").read_text())
    used = {
        re.sub(r"_(bucket|count|sum)$", "", m)
        for q in queries
        for m in re.findall(r"audit_[a-z_]+", q)
    }
    assert used, "no audit metrics queried"
    assert used <= exported_metrics(), used - exported_metrics()

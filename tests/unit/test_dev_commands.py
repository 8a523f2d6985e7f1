"""What ``make dev`` prints works pasted into a shell: the integrity proof's command once failed
there (``AUDIT_EVENT_KEYS`` holds ``|``, which the shell took for a pipe)."""

import importlib.util
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.env import ROOT

NASTY = {  # what keys, URLs and passwords may hold
    "reader_url": "postgresql://audit_verify:p'a$s w|d@127.0.0.1:5432/audit",
    "seal_public_keys": "k1+/=,k2",
    "event_keys": "secretA,secretB@audit.query|audit.read,secretC@audit.dlq",
    "nats_url": "nats://127.0.0.1:4222",
    "dlq_password": "a$b`c\"d'e;f&g",
    "dlq_key": "key@audit.dlq",
    "owner_url": "postgresql://postgres:o'w$n|er@127.0.0.1:5432/postgres",
    "archive": "/home/a user/archive's",
    "retention_password": "r$e`t|n",
    "retention_key": "key@audit.retention",
}


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "scripts" / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for tool in (
        "audit-verify",
        "audit-dlq",
        "audit-retention",
    ):  # stand-ins that say what they were given
        fake = tmp_path / tool
        fake.write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
        )
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(module, "BIN", tmp_path)
    return module


def block(text: str, title: str) -> str:
    """The command printed under the line starting with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def test_the_printed_commands_run_pasted_with_every_value_intact(dev: Any) -> None:
    text = dev.commands(api_port=8000, query_port=8080, token="t", reader_token="r", **NASTY)
    verify = subprocess.run(["bash", "-c", block(text, "prove")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    env = json.loads(verify.stdout)["env"]
    assert env["AUDIT_EVENT_KEYS"] == NASTY["event_keys"]
    assert env["AUDIT_READER_DATABASE_URL"] == NASTY["reader_url"]
    assert env["AUDIT_SEAL_PUBLIC_KEYS"] == NASTY["seal_public_keys"]
    dlq = subprocess.run(
        ["bash", "-c", block(text, "dead letters")], capture_output=True, text=True
    )
    assert dlq.returncode == 0, dlq.stderr
    given = json.loads(dlq.stdout)
    assert given["argv"] == ["list"]
    assert given["env"]["AUDIT_NATS_PASSWORD"] == NASTY["dlq_password"]
    retention = subprocess.run(
        ["bash", "-c", block(text, "retention")], capture_output=True, text=True
    )
    assert retention.returncode == 0, retention.stderr
    told = json.loads(retention.stdout)
    assert told["argv"] == ["run", "--days", "30", "--archive", NASTY["archive"], "--dry-run"]
    assert told["env"]["DATABASE_URL"] == NASTY["owner_url"]
    assert told["env"]["AUDIT_NATS_PASSWORD"] == NASTY["retention_password"]
    assert told["env"]["AUDIT_EVENT_KEYS"] == NASTY["retention_key"]

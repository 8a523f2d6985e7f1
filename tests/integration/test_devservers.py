"""The embedded servers work wherever the user cloned, as root too, without loosening any
directory's permissions (PostgreSQL refuses to run as root)."""

import os
from pathlib import Path

import pytest

from audit_devservers import PostgresServer


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs PostgreSQL to drop privileges")
def test_postgres_runs_as_root_in_a_private_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    modes = {p: p.stat().st_mode for p in [home, *home.parents]}
    with PostgresServer(home / "pg") as server:
        assert server.psql("SELECT count(*) FROM pg_stat_activity") != ""
    assert {p: p.stat().st_mode for p in modes} == modes  # no o+x added anywhere
    assert (home / "pg" / "pgdata").stat().st_uid == 0  # the data is ours, not a system user's

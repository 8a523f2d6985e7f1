"""The fault rig: a PostgreSQL and a NATS of its own (these tests kill them), fresh streams and
table per test, the API and N consumers as real processes, and a summary table at the end."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_devservers import NatsServer, PostgresServer
from audit_devservers.clusters import (
    DelayLine,
    NatsCluster,
    PostgresStandby,
    multi_host_url,
    primary_with_standby,
)
from tests.env import BROKER_PASSWORDS
from tests.faults.harness import RESULTS
from tests.faults.rig import STANDBY_LAG, Rig, prepared


@pytest.fixture(scope="module")
def fault_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("fault-pg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("fault-nats"), auth=BROKER_PASSWORDS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three JetStream nodes, fsync before every ack, the project's identities."""
    cluster = NatsCluster(tmp_path_factory.mktemp("fault-cluster"), 3, "always", BROKER_PASSWORDS)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def rig(
    fault_pg: PostgresServer, fault_nats: NatsServer, tmp_path: Path
) -> AsyncIterator[Rig]:
    fault_pg.start()  # a previous scenario may have left it stopped
    fault_nats.start()
    r = await prepared(fault_pg, fault_nats, tmp_path)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
async def cluster_rig(
    fault_pg: PostgresServer, fault_cluster: NatsCluster, tmp_path: Path
) -> AsyncIterator[Rig]:
    """The apps on a three-node JetStream cluster, both streams R3."""
    fault_pg.start()
    fault_cluster.start()  # a previous scenario may have left nodes stopped
    r = await prepared(fault_pg, fault_cluster, tmp_path, replicas=3)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(params=[True, False], ids=["sync", "async"])
async def failover_rig(
    request: pytest.FixtureRequest, fault_nats: NatsServer, tmp_path: Path
) -> AsyncIterator[tuple[Rig, PostgresStandby]]:
    """The apps on a primary with a standby (synchronous, or not), through a multi-host URL.
    The standby streams through a 20 ms delay line, as from another zone: with an asynchronous
    standby that is the window of commits a failover loses."""
    fault_nats.start()
    line = DelayLine(STANDBY_LAG)
    primary, standby = primary_with_standby(tmp_path / "pg", request.param, line.port)
    line.target_port = primary.port
    primary.start()
    standby.start()
    r = await prepared(primary, fault_nats, tmp_path, multi_host_url(primary, standby))
    standby.line = line
    try:
        yield r, standby
    finally:
        r.stop()
        primary.stop()
        standby.stop()
        line.close()


@pytest.fixture
def db_url(rig: Rig) -> str:
    """The owner's URL, for checking rows."""
    return rig.pg.url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("fault scenarios")
        for summary in RESULTS:
            terminalreporter.write_line(summary.line())

"""The fault rig: a PostgreSQL and a NATS of its own (these tests kill them), fresh streams and
table per test, the API and N consumers as real processes, and a summary table at the end."""

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.settings import ProvisionSettings, Settings
from audit_devservers import NatsServer, PostgresServer
from audit_devservers.clusters import (
    DelayLine,
    NatsCluster,
    PostgresStandby,
    multi_host_url,
    primary_with_standby,
)
from tests.conftest import ADMIN, BROKER_PASSWORDS, ROOT, service_env
from tests.faults.harness import RESULTS
from tests.processes import Service, api, consumer

ACK_WAIT = "5"  # short, so redelivery after a crash shows up quickly
STANDBY_LAG = 0.02  # seconds between the primary and its standby (another zone, say)


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


class Rig:
    """Servers, settings and processes of one fault scenario."""

    def __init__(
        self, pg: PostgresServer, ns: NatsServer | NatsCluster, settings: Settings, logs: Path
    ):
        self.pg, self.nats, self.settings, self.logs = pg, ns, settings, logs
        writer = settings.writer_database_url
        assert writer is not None
        self.env = service_env(settings, AUDIT_WRITER_DATABASE_URL=writer)
        self.services: list[Service] = []
        self.api: Service | None = None
        self.consumers: list[Service] = []

    @property
    def url(self) -> str:
        assert self.api is not None
        return f"http://127.0.0.1:{self.api.port}"

    def start(self, consumers: int, **env: str) -> "Rig":
        self.api = api(self.env, self.logs).start()
        self.consumers = [
            consumer({**self.env, **env}, self.logs, i).start() for i in range(consumers)
        ]
        self.services = [self.api, *self.consumers]
        for service in self.services:
            service.wait_ready()
        return self

    def stop(self) -> None:
        for service in self.services:
            service.stop()


async def prepared(
    pg: PostgresServer,
    ns: NatsServer | NatsCluster,
    logs: Path,
    database_url: str | None = None,
    replicas: int = 1,
) -> Rig:
    """Fresh streams and an empty table on these servers; ``database_url``: the owner's URL
    the apps get (a multi-host one for failover), ``replicas``: of both streams."""
    owner = database_url or pg.url
    settings = Settings(
        DATABASE_URL=owner,
        NATS_URL=ns.url_as(ADMIN),
        AUDIT_WRITER_DATABASE_URL=owner.replace("postgres@", "audit_consumer:pw@"),
        AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations"),
        provision=ProvisionSettings(
            AUDIT_ACK_WAIT_SECONDS=ACK_WAIT, AUDIT_STREAM_REPLICAS=replicas
        ),
        AUDIT_FETCH_WAIT_SECONDS=0.5,
    )
    await migrate(settings)
    nc = await nats.connect(servers=settings.nats_url.split(","))
    for name in (settings.names.stream, settings.names.dlq_stream):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(name)
    await nc.close()
    await provision(settings)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("TRUNCATE audit_events, audit_seals")
    return Rig(pg, ns, settings, logs)


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

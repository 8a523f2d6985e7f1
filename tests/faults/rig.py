"""The fault rig: servers, settings and processes of one fault scenario."""

import contextlib
from pathlib import Path

import nats
import psycopg

from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.settings import ProvisionSettings, Settings
from audit_devservers import NatsServer, PostgresServer
from audit_devservers.clusters import (
    NatsCluster,
)
from tests.env import ADMIN, EMPTY_LOG, ROOT, service_env
from tests.processes import Service, api, consumer

ACK_WAIT = "5"  # short, so redelivery after a crash shows up quickly
STANDBY_LAG = 0.02  # seconds between the primary and its standby (another zone, say)


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
        conn.execute(EMPTY_LOG)
    return Rig(pg, ns, settings, logs)

"""Past one machine: the pipeline on a three-node JetStream cluster (both streams R3, fsync
before every ack) and on a PostgreSQL primary with a synchronous standby, broken for real under
load. Every event the API acknowledged must be stored exactly once, and audit-verify must find
the table intact; each scenario also reports how long the system took to come back and how many
requests it refused (503) meanwhile — refused is honest, acknowledged-then-lost never is."""

import asyncio
import time
from typing import Any

import nats

from audit_devservers.clusters import NatsCluster, PostgresStandby
from tests.faults.harness import Load, verify, wait_stored
from tests.faults.rig import Rig
from tests.helpers import drained, rows_at_least, stored_ids, wait_for


def cluster(rig: Rig) -> NatsCluster:
    assert isinstance(rig.nats, NatsCluster)
    return rig.nats


async def leader(rig: Rig, of_durable: bool = False) -> str:
    """The node (``n1``…) leading the stream, or the durable consumer, right now."""
    names = rig.settings.names
    nc = await nats.connect(servers=rig.settings.nats_url.split(","), connect_timeout=2)
    try:
        js = nc.jetstream(timeout=2)
        if of_durable:
            info: Any = await js.consumer_info(names.stream, names.durable)
        else:
            info = await js.stream_info(names.stream)
        return str(info.cluster.leader or "")
    finally:
        await nc.close()


async def new_leader(rig: Rig, old: str, of_durable: bool = False) -> bool:
    try:
        return (await leader(rig, of_durable)) not in ("", old)
    except Exception:  # no quorum yet, or the node we asked is the dead one
        return False


async def acks_resume(load: Load) -> None:
    """Until the API acknowledges again (the broker is back for the publish path)."""
    mark = load.answered
    await wait_for(lambda: load.since(mark)[200] > 0, timeout=120)


async def kill_leader(rig: Rig, db_url: str, of_durable: bool) -> None:
    rig.start(consumers=2)
    load = Load(rig.url, concurrency=16).start()
    await wait_for(lambda: rows_at_least(db_url, 300))
    name = await leader(rig, of_durable)
    node = cluster(rig).node(name)
    refused_before = load.statuses[503]
    killed = time.monotonic()
    node.kill()
    await wait_for(lambda: new_leader(rig, name, of_durable), timeout=120)
    elected = time.monotonic() - killed
    await acks_resume(load)
    api_back = time.monotonic() - killed
    node.start()  # the dead node rejoins and catches up from its peers
    await asyncio.to_thread(cluster(rig).wait_healthy, 120)
    stored = len(await stored_ids(db_url))
    await wait_for(lambda: rows_at_least(db_url, stored + 300))  # and the pipeline flows on
    await load.stop()
    recovery = await wait_stored(db_url, load.acknowledged) + (time.monotonic() - killed)
    what = "durable" if of_durable else "stream"
    await verify(
        f"R3: SIGKILL {what} leader",
        db_url,
        load,
        recovery_s=recovery,
        leader=name,
        elected_s=round(elected, 1),
        api_back_s=round(api_back, 1),
        refused=load.statuses[503] - refused_before,
    )


async def test_sigkill_the_stream_leader_under_load(cluster_rig: Rig, db_url: str) -> None:
    await kill_leader(cluster_rig, db_url, of_durable=False)


async def test_sigkill_the_durables_leader_under_load(cluster_rig: Rig, db_url: str) -> None:
    await kill_leader(cluster_rig, db_url, of_durable=True)


async def test_rolling_restart_of_every_node_under_load(cluster_rig: Rig, db_url: str) -> None:
    rig = cluster_rig
    rig.start(consumers=2)
    load = Load(rig.url, concurrency=16).start()
    await wait_for(lambda: rows_at_least(db_url, 300))
    started = time.monotonic()
    for node in cluster(rig).nodes:  # as `kubectl rollout restart` of the StatefulSet would
        node.stop()
        node.start()
        await asyncio.to_thread(cluster(rig).wait_healthy, 120)
    rolled = time.monotonic() - started
    await acks_resume(load)
    await load.stop()
    recovery = await wait_stored(db_url, load.acknowledged)
    await verify(
        "R3: rolling restart, 3 nodes",
        db_url,
        load,
        recovery_s=recovery,
        rolled_s=round(rolled, 1),
        refused=load.statuses[503],
    )


async def test_two_of_three_nodes_down_is_refused_never_acknowledged(
    cluster_rig: Rig, db_url: str
) -> None:
    """Without a quorum nothing can be stored redundantly, so the API must say 503, never 200;
    with the nodes back, the pipeline resumes by itself."""
    rig = cluster_rig
    rig.start(consumers=2)
    load = Load(rig.url, concurrency=16).start()
    await wait_for(lambda: rows_at_least(db_url, 300))
    down = cluster(rig).nodes[1:]
    for node in down:
        node.stop()
    stopped = time.monotonic()
    await asyncio.sleep(3)  # requests in flight at the stop are answered by now
    mark = load.answered
    await asyncio.sleep(5)
    during = load.since(mark)
    assert during[503] > 0, during
    assert during[200] == 0, f"acknowledged without a quorum: {during}"
    assert set(during) <= {503}, during
    for node in down:
        node.start()
    restarted = time.monotonic()
    await asyncio.to_thread(cluster(rig).wait_healthy, 120)
    await acks_resume(load)
    api_back = time.monotonic() - restarted
    await load.stop()
    assert all(c.proc is not None and c.proc.poll() is None for c in rig.consumers)
    recovery = await wait_stored(db_url, load.acknowledged) + (time.monotonic() - stopped)
    await verify(
        "R3: 2 of 3 nodes down 8 s",
        db_url,
        load,
        recovery_s=recovery,
        api_back_s=round(api_back, 1),
        refused=load.statuses[503],
    )


async def test_postgres_fails_over_to_its_standby_under_load(
    failover_rig: tuple[Rig, PostgresStandby],
) -> None:
    """The primary's zone is lost — the primary SIGKILLed and the WAL still on its 20 ms link
    to the standby with it — and the standby is promoted; the consumers, given both hosts with
    ``target_session_attrs=read-write``, move on by themselves. With a synchronous standby
    (``remote_apply``) every commit the consumers acked after was on the standby already, so
    nothing acknowledged is lost. An asynchronous standby loses the commits still on the link:
    those events were acked to JetStream already, so nothing brings them back. That loss is
    measured and reported (never doubled rows, in either mode)."""
    rig, standby = failover_rig
    synchronous = "synchronous_standby_names" in rig.pg.settings
    url = rig.settings.database_url  # the multi-host URL
    rig.start(consumers=2)
    load = Load(rig.url, concurrency=32).start()
    await wait_for(lambda: rows_at_least(url, 1000))
    assert standby.line is not None
    standby.line.cut()
    rig.pg.kill()  # the old primary is gone for good: it can never take writes again
    failed = time.monotonic()
    await asyncio.to_thread(standby.promote)
    promoted = time.monotonic() - failed
    stored = len(await stored_ids(standby.url))
    await wait_for(lambda: rows_at_least(standby.url, stored + 300), timeout=120)
    writing_again = time.monotonic() - failed
    await load.stop()
    assert all(c.proc is not None and c.proc.poll() is None for c in rig.consumers)
    if not synchronous:  # measure, do not wait for what cannot come
        await wait_for(lambda: drained(rig.settings), timeout=120)
        rows = await stored_ids(standby.url)
        assert len(rows) == len(set(rows)), "a row was stored twice"
        lost = len(set(load.acknowledged) - set(rows))
        print(f"\nPostgreSQL failover (async)  acknowledged={len(load.acknowledged)} lost={lost}")
        return
    recovery = await wait_stored(standby.url, load.acknowledged) + (time.monotonic() - failed)
    await verify(
        "PostgreSQL failover (sync)",
        standby.url,
        load,
        recovery_s=recovery,
        promoted_s=round(promoted, 1),
        writing_again_s=round(writing_again, 1),
        refused=load.statuses[503],
    )

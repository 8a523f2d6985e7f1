"""The consumer loop: fetch a batch from the durable, store it, then ack it.

Order of operations per batch, and why no acknowledged event is lost or doubled:

1. check every message's signature and decode it; one that is forged, unsigned or not a valid
   event is dead-lettered (below);
2. write the valid ones in one transaction and COMMIT (``writer.py``: rows already stored are
   skipped by the primary key); a row PostgreSQL rejects, or one no partition may take
   (``bounds.py``: too old, too far ahead), is isolated and dead-lettered, its neighbours are
   stored — but a partition that should exist and does not is an outage, retried;
3. publish each dead letter to ``AUDIT_DLQ`` and wait for JetStream's ack (``Nats-Msg-Id`` =
   ``<stream>-<seq>``, so a redelivered poison message is dead-lettered once), and record it in
   ``audit_dead_letters`` (its sequence, subject, reason and digest: ``accounting.py``);
4. only then ack the batch. A crash anywhere before 4 means redelivery after ``ack_wait``,
   and the primary key makes the second write a no-op.

Every broker sequence is thus a row, a dead-letter record or a duplicate record before the
durable's ack floor passes it; the sealer puts that floor into each seal, and ``audit-verify``
names any sequence below it that nothing accounts for. What PostgreSQL says it inserted is what
is counted as stored: a shortfall is logged and counted (``rows_missing_total``), never
claimed.

Committed rows are sealed within ``AUDIT_SEAL_INTERVAL_SECONDS`` by whichever consumer's
sealer runs next (``sealer.py``); sealing never delays a batch or its ack.

If PostgreSQL is unavailable the batch stays in hand, unacked: the loop stops fetching, backs
off with jitter, reconnects and retries the same rows, telling JetStream the messages are still
in progress so they are not handed to another worker meanwhile. Nothing is dead-lettered for an
outage, and the durable has no redelivery limit.

(Over 300 lines on purpose: the loop, its shutdown and one batch's write, dead-letter and ack
steps stay in one file, because the guarantee is the order of those steps.)
"""

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from audit_consumer import metrics
from audit_consumer.accounting import Epoch, ack_floor, register_epoch
from audit_consumer.batch import Batch, Checks, decode_batch
from audit_consumer.deadletter import Publisher, dead_letter
from audit_consumer.puller import Puller, Source, delivery
from audit_consumer.sealer import Sealer
from audit_consumer.settings import Settings
from audit_consumer.spans import batch_span, consume_spans
from audit_consumer.trimming import Trimmer
from audit_consumer.writer import BatchWriter, WriteResult, WriterPool, record_letters
from audit_events.broker import CONSUMER, connect_until
from audit_events.seals import Floor, SealKey, SealKeys

log = logging.getLogger("audit.consumer")
T = TypeVar("T")


@dataclass
class Stats:
    """Counters the health endpoint reports and the tests read."""

    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0


class Consumer:
    """One worker on the shared durable. Any number of these run side by side."""

    def __init__(self, settings: Settings, writers: WriterPool | None = None) -> None:
        self.settings = settings
        self.stats = Stats()
        self.nc: NATS | None = None
        url = settings.consumer_database_url
        self.writers = writers or WriterPool(
            settings.db_connections, lambda: BatchWriter.connect(url)
        )
        self.checks = Checks(settings.keys, settings.accept_unsigned_until, settings.names)
        self.bounds = settings.bounds()  # what the partitions take (bounds.py)
        metrics.RETENTION_DAYS.set(settings.retention_days)
        self.epoch: Epoch | None = None  # the durable's incarnation (accounting.py)
        self.floor = 0  # its ack floor, as last read
        key = SealKey(settings.seal_key)
        trusted = settings.seal_public_keys
        self.sealer = Sealer(
            url,
            key,
            settings.seal_interval_seconds,
            SealKeys([key.public_text(), *trusted.split(",")]) if trusted else None,
            self.current_floor,
            self.bounds,
        )
        self.db_ok = False
        self.durable_ok = True  # until the first check says otherwise
        self.last_progress = time.monotonic()
        self.source: Source | None = None
        self._stopping = asyncio.Event()
        metrics.DB_UP.set_function(lambda: float(self.db_ok))
        metrics.NATS_UP.set_function(lambda: float(self.nats_connected))

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return (SIGTERM/SIGINT)."""
        if not self._stopping.is_set():
            log.info("stopping: finishing the batch in hand")
        self._stopping.set()

    async def stop_requested(self) -> None:
        """Returns once :meth:`stop` was called."""
        await self._stopping.wait()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def nats_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def current_floor(self) -> Floor | None:
        """What the sealer puts into its next seal: every sequence of this epoch up to the
        durable's ack floor was acknowledged, so must be accounted for."""
        epoch = self.epoch
        return Floor(epoch.id, epoch.first_seq, self.floor) if epoch else None

    async def run(self) -> None:
        """Connect (waiting for NATS as long as it takes), then consume until stopped."""
        self.nc = await self._connect_nats()
        if self.nc is None:
            return
        js = self.nc.jetstream()
        names = self.settings.names
        puller = Puller(self.nc, names.stream, names.durable)
        await puller.start()
        log.info("consuming %s/%s", names.stream, names.durable)
        await self._connect_db()
        background = [
            asyncio.create_task(self._watch_durable(js)),
            asyncio.create_task(self.sealer.run()),
        ]
        try:
            while self.epoch is None and not self.stopping:  # rows must carry their epoch
                await self._sleep(0.1)
            await self.consume(puller, js)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._close(puller)

    async def consume(self, source: Source, js: Publisher, max_batches: int | None = None) -> None:
        """Fetch, store and ack batches until stopped (or after ``max_batches`` batches).

        Pipelining: PostgreSQL stores batches N-1 and N (one connection each) while this loop
        decodes batch N+1 and NATS delivers N+2. Each batch is acked only after its own commit,
        in whatever order the commits finish, so this changes throughput, not guarantees."""
        self.source = source
        pending = asyncio.create_task(self._fetch(source))
        storing: collections.deque[asyncio.Task[None]] = collections.deque()
        slot, batches = 0, 0
        try:
            while True:
                msgs = await pending
                if msgs is None:  # connection closed for good
                    break
                batches += bool(msgs)
                stop = self.stopping or batches == max_batches  # no new fetch after this one
                if not stop:
                    pending = asyncio.create_task(self._fetch(source))
                if msgs:
                    batch = self._decode(msgs)
                    if len(storing) == self.writers.size:  # wait for the slot to be free
                        await storing.popleft()
                    storing.append(asyncio.create_task(self.settle(js, batch, slot)))
                    slot = (slot + 1) % self.writers.size
                elif not self.writers.connected(0):  # idle: reconnect the DB if it was lost
                    await self._connect_db()
                if stop:
                    break
            while storing:
                await storing.popleft()
            # A pull request stays open on the server until it expires, so messages can land
            # after the last fetch; left alone they would wait ack_wait for redelivery.
            await self.handle(js, await source.drain())
        finally:
            for task in (pending, *storing):  # only when cancelled: unacked means redelivered
                if not task.done():
                    task.cancel()

    def _decode(self, msgs: list[Msg]) -> Batch:
        """Check and decode a fetched batch, its rows carrying the durable's epoch (every
        path that stores goes through here: rows without it would be unaccounted)."""
        return decode_batch(msgs, self.checks, self.epoch.id if self.epoch else None)

    async def _watch_durable(self, js: JetStreamContext, every: float = 1.0) -> None:
        """Keep the lag metric current (what KEDA sees), trim the stream below the ack floor
        (``trimming.py``), and notice a deleted durable or stream: this worker then is not
        ready, and says why once, instead of idling as if all is well."""
        names = self.settings.names
        trimmer = Trimmer(js, names.stream)
        while True:
            try:
                info = await js.consumer_info(names.stream, names.durable)
                if self.epoch is None or self.epoch.created != info.created:
                    self.epoch = await register_epoch(
                        self.settings.consumer_database_url, names, info
                    )
                    log.info("epoch %d (accounting from stream sequence %d)",
                             self.epoch.id, self.epoch.first_seq)  # fmt: skip
                self.floor = ack_floor(info)
                metrics.LAG.set(info.num_pending + info.num_ack_pending)
                await trimmer.trim(info)
                if not self.durable_ok:
                    log.info("durable %s/%s is back", names.stream, names.durable)
                self.durable_ok = True
            except NotFoundError as exc:
                trimmer = Trimmer(js, names.stream)  # a new stream starts again at sequence 1
                if self.durable_ok:
                    log.error(
                        "durable %s/%s is missing (%s): not ready; run audit-setup",
                        names.stream, names.durable, exc.description or "not found",
                    )  # fmt: skip
                self.durable_ok = False
            except Exception as exc:
                log.debug("durable check failed: %s", exc)
            await asyncio.sleep(every)

    async def _fetch(self, source: Source) -> list[Msg] | None:
        """One batch; ``[]`` when idle or NATS is away (the loop stays alive), ``None`` once
        the connection is closed."""
        self.last_progress = time.monotonic()
        try:
            return await source.fetch(self.settings.batch_size, self.settings.fetch_wait_seconds)
        except ConnectionClosedError:
            return None
        except Exception as exc:  # e.g. disconnected while NATS restarts
            log.warning("fetch failed: %s", exc)
            await self._sleep(1.0)
            return []

    async def _connect_nats(self) -> NATS | None:
        return await connect_until(
            self.settings,
            CONSUMER,
            self._stopping,
            self.settings.backoff_max_seconds,
            error_cb=_log_nats_error,
        )

    async def _connect_db(self) -> None:
        """Connect a writer now, so readiness is true before the first batch arrives."""
        try:
            await self.writers.get(0)
            self.db_ok = True
        except (psycopg.Error, OSError) as exc:
            self.db_ok = False
            log.warning("PostgreSQL not reachable: %s", _one_line(exc))

    async def _close(self, puller: Puller) -> None:
        """Stop the pull subscription, make sure every ack reached the server, disconnect.

        (``nc.drain()`` is not needed: every ack was published before this point.)"""
        if self.nc is not None and not self.nc.is_closed:
            try:
                await puller.stop()
                await self.nc.flush(timeout=5)  # PING/PONG: the server has every ack before it
            except Exception as exc:
                log.warning("could not flush acks (%s); unacked ones will be redelivered", exc)
            await self.nc.close()
        await self.writers.close()
        # Seal what this worker committed last, so a scaled-down pool leaves nothing unsealed
        # (another consumer would seal it anyway; this only makes it sooner).
        try:
            await asyncio.wait_for(self.sealer.seal(), 5)
        except Exception as exc:
            log.info("no final seal (%s); another consumer will seal", _one_line(exc))
        await self.sealer.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one batch -----------------------------------------------------------------------

    async def handle(self, js: Publisher, msgs: list[Msg]) -> None:
        """Store, dead-letter and ack one fetched batch (the order is the guarantee)."""
        if msgs:
            await self.settle(js, self._decode(msgs))

    async def settle(self, js: Publisher, batch: Batch, slot: int = 0) -> None:
        """Settle one batch with the broker: write its rows and COMMIT, dead-letter (and record)
        what cannot be stored, then ack every message."""
        msgs, valid, dead = batch.msgs, batch.valid, batch.dead
        metrics.BATCH_SIZE.observe(len(msgs))
        metrics.REDELIVERIES.inc(batch.redelivered)
        spans = consume_spans(valid)
        try:
            with batch_span(spans, len(msgs)):
                result = await self._write_until_stored(batch, slot)
                if result is None:  # stopping while PostgreSQL is down: hand the batch back
                    for msg in msgs:
                        await msg.nak()
                    return
                # Committed: count now, before the acks make it visible to anyone watching.
                self.stats.stored += result.inserted
                self.stats.duplicates += result.duplicates
                metrics.MESSAGES.labels("stored").inc(result.inserted)
                metrics.MESSAGES.labels("duplicate").inc(result.duplicates)
                if result.missing:
                    metrics.ROWS_MISSING.inc(result.missing)
                    log.error(
                        "PostgreSQL accepted %d rows of a batch without inserting them: a"
                        " trigger or rule dropped acknowledged events (audit-verify names them)",
                        result.missing,
                    )
                dead += [(valid[i], "rejected", reason) for i, reason in result.rejected]
                for msg, kind, reason in dead:
                    if await dead_letter(js, self.settings.names, msg, kind, reason):
                        self.stats.dead_lettered += 1
                if dead and batch.epoch is not None:
                    letters = [
                        (delivery(m)[0], m.subject, kind, reason, hashlib.sha256(m.data).digest())
                        for m, kind, reason in dead
                    ]
                    epoch = batch.epoch
                    done = await self._until_stored(
                        slot, lambda w: record_letters(w, epoch, letters)
                    )
                    if done is None:
                        return  # stopping while PostgreSQL is down: unacked, redelivered
                for msg in msgs:
                    await msg.ack()
        except Exception as exc:
            # Rows are committed but not acked: redelivery will find them already stored.
            log.warning("could not dead-letter/ack the batch (%s); it will be redelivered", exc)
            return
        finally:
            for span in spans:
                span.end()
            if self.source is not None:
                self.source.release(msgs)
        self.stats.batches += 1

    async def _write_until_stored(self, batch: Batch, slot: int) -> WriteResult | None:
        """Write the batch's rows, retrying through any PostgreSQL outage. ``None`` if asked to
        stop."""
        if not batch.rows:
            return WriteResult()

        async def write(writer: BatchWriter) -> WriteResult:
            kept, refused = self.bounds.split(batch.rows)  # again on each try: bounds move
            rows = batch.rows if not refused else [batch.rows[i] for i in kept]
            with metrics.WRITE_SECONDS.time():
                result = await writer.write(rows)
            if refused:
                result.rejected = sorted([(kept[i], why) for i, why in result.rejected] + refused)
            return result

        return await self._until_stored(slot, write)

    async def _until_stored(
        self, slot: int, write: Callable[[BatchWriter], Awaitable[T]]
    ) -> T | None:
        """``write`` over the slot's connection, retried through any PostgreSQL outage; ``None``
        if asked to stop meanwhile."""
        delay = 0.1
        while True:
            try:
                writer = await self.writers.get(slot)
                result = await write(writer)
                metrics.LAST_WRITE.set_to_current_time()
                if not self.db_ok:
                    log.info("PostgreSQL writes ok")
                self.db_ok = True
                return result
            except (psycopg.Error, OSError) as exc:
                self.db_ok = False
                log.warning("write failed, retrying in ~%.1fs: %s", delay, _one_line(exc))
                await self.writers.discard(slot)
            if self.stopping:
                return None
            self.last_progress = time.monotonic()  # waiting on PostgreSQL is not being stuck
            # Keep every message in hand ours while we wait (in_progress resets ack_wait).
            for msg in list(self.source.held.values()) if self.source is not None else []:
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.debug("in_progress failed: %s", exc)
            await self._sleep(random.uniform(0, delay))  # full jitter
            delay = min(delay * 2, self.settings.backoff_max_seconds)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


async def _log_nats_error(exc: Exception) -> None:
    log.warning("NATS: %s", exc)

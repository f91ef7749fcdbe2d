"""The ledger's writer: usage records queued on the request path, written in batches off it.

`submit` is all a request pays: an append to a bounded deque. A task on the gateway's loop
takes up to `ledger.batch_records` at a time and writes them in one transaction. A slow or
dead database never slows or fails a request: records wait (up to `ledger.buffer_records`,
the batch being written included) while the writer retries with a growing pause; past that
bound new records are dropped, counted (`tollway_ledger_dropped_total`) and logged once per
incident (an incident ends when a write succeeds again). On shutdown `close` writes what is
queued within its deadline; what is left then is dropped and counted, and so is the batch being
written if closing the store ends its write in failure (or it has not ended a moment later).
Each record is counted once: written or dropped.

A reader that must see every record, written or not (the budgets' spend rebuilt when a reload
adds a budget, tollway.gateway.store.budgets), reads the database inside `writes_held`: no
batch is being written then, so each record is either in the database or in `unwritten`, never
in both or neither.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tollway.core.config import Ledger as LedgerConfig
from tollway.core.ledger.periods import DAY
from tollway.core.ledger.record import UsageRecord
from tollway.gateway.store import LedgerStore, Refused, SchemaTooNew, StoreError
from tollway.gateway.telemetry.worker_gauges import Combine

log = logging.getLogger("tollway")
_RETRY_MIN, _RETRY_MAX = 0.25, 5.0  # seconds between attempts while the database fails
_PRUNE_EVERY = 3600.0  # seconds between retention passes
_LATE_WRITE_SECONDS = 0.5  # after the store is closed, how long close waits for the write it ended


class LedgerCounters:
    """The books' Prometheus counters (the ledger's, and the budgets' shared store's), registered
    once per gateway (a reload may replace the Ledger and the budgets; the counts go on)."""

    def __init__(self, registry: object) -> None:
        self.written = Counter("tollway_ledger_written", "Usage records written to the ledger database.",
                               registry=registry)  # type: ignore[arg-type]
        self.dropped = Counter("tollway_ledger_dropped", "Usage records dropped: the queue was full, or shutdown "
                               "came before the database took them.", registry=registry)  # type: ignore[arg-type]
        self.errors = Counter("tollway_ledger_write_errors", "Failed ledger writes (each is retried).",
                              registry=registry)  # type: ignore[arg-type]
        # Per failed sync, not per incident (which is logged once): an outage alerts while it lasts.
        self.budget_store_errors = Counter(
            "tollway_budget_store_errors", "Syncs of calendar budgets' spend with the shared store that failed, by "
            "backend (each replica counts its own spend meanwhile).", ("backend",),
            registry=registry)  # type: ignore[arg-type]


class Ledger:
    def __init__(self, store: LedgerStore, config: LedgerConfig, counters: LedgerCounters,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.counters = counters
        self.clock = clock
        self._queue: deque[UsageRecord] = deque()
        self._in_flight = 0  # records of the batch being written, not yet settled: they count against the buffer
        self._idle = asyncio.Event()  # no write under way
        self._idle.set()
        # Held by each batch's write and by a reader of the whole ledger (`writes_held`), so that
        # reader never sees a batch half way: out of the queue and not yet in the database
        self._writes = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropping = False  # an incident of drops is under way (logged once)
        self._failing = False  # an incident of write errors is under way (logged once)
        self._closing = False
        self._closed = False  # past close's deadline: a batch whose write fails is dropped, not put back
        self._abandoned = False  # close counted the batch being written as dropped: its end counts nothing
        self._next_prune = 0.0
        self.opened = False
        self.broken = False  # the database cannot be used by this gateway (a newer schema): drop records

    # -- the request path ---------------------------------------------------------------

    def submit(self, record: UsageRecord) -> None:
        """Queue one record; never waits, never raises."""
        if len(self._queue) + self._in_flight >= self.config.buffer_records or self._closing or self.broken:
            self.counters.dropped.inc()
            if not self._dropping:
                self._dropping = True
                log.warning("ledger: %d records are waiting for the database; new usage records are dropped "
                            "(tollway_ledger_dropped_total) until it catches up", self.config.buffer_records)
            return
        self._queue.append(record)
        if len(self._queue) >= self.config.batch_records and not self._failing:  # (failing: its pause holds)
            self._wake.set()

    # -- the writer ---------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) + self._in_flight

    @contextlib.asynccontextmanager
    async def writes_held(self) -> AsyncIterator[None]:
        """While inside, no batch is being written (the write under way, if any, ends first) and
        none starts: the database holds what was written, and `unwritten` the rest. Records
        submitted meanwhile are queued as ever; the writer goes on when the reader is done."""
        async with self._writes:
            yield

    def unwritten(self) -> Iterator[UsageRecord]:
        """The records not in the database, oldest first; only whole inside `writes_held` (else
        the batch being written is in neither). Iterate it without awaiting: requests add to it."""
        return iter(self._queue)

    def lag(self) -> float:
        """Seconds the oldest unwritten record has waited (0 when none waits)."""
        return max(self.clock() - self._queue[0].ts, 0.0) if self._queue else 0.0

    def start(self, loop: asyncio.AbstractEventLoop, on_open: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write from now on, in a task on `loop`; the store is opened first (if it is not
        yet), retried while the database is down, and `on_open` awaited once it is."""
        self._task = loop.create_task(self._run(on_open))
        self._task.add_done_callback(_said_if_died)

    async def open(self) -> None:
        """Open the store now (start does it too). Raises SchemaTooNew or StoreError."""
        await self.store.open()
        self.opened = True

    async def _open(self) -> bool:
        pause = _RETRY_MIN
        while not self._closing:
            try:
                await self.open()
                return True
            except SchemaTooNew as exc:
                log.error("ledger: %s Usage records are dropped.", exc)
                self.broken = True
                return False
            except (StoreError, OSError) as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("ledger: cannot open the %s database (%s); records wait and it is retried",
                                self.store.backend, exc)
            await self._sleep(pause)
            pause = min(pause * 2, _RETRY_MAX)
        return False

    async def _run(self, on_open: Callable[[], Awaitable[None]] | None) -> None:
        if not self.opened and not await self._open():
            return
        if on_open is not None:
            await on_open()
        pause = _RETRY_MIN
        while not self._closing:
            if not self._queue:
                await self._sleep(self.config.flush_interval)
            elif len(self._queue) < self.config.batch_records:  # let a batch fill, a little
                await self._sleep(self.config.flush_interval)
            if await self._write_batch():
                pause = _RETRY_MIN
                await self._maybe_prune()
            elif not self._closing:  # (closing: close's flush retries, within its deadline)
                await self._sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _write_batch(self) -> bool:
        """Write the oldest batch; on failure put it back in front. True unless it failed."""
        async with self._writes:  # (uncontended but while a reader holds writes: no wait)
            if not self._queue:
                return True
            n = min(len(self._queue), self.config.batch_records)
            batch = [self._queue.popleft() for _ in range(n)]
            self._in_flight = n
            self._idle.clear()
            try:
                return await self._write(batch)
            finally:
                self._in_flight = 0
                self._idle.set()

    async def _write(self, batch: list[UsageRecord]) -> bool:
        try:
            await self.store.write(batch)
        except Exception as exc:  # noqa: BLE001 - the database's state or a record's data, told apart here
            if _database_down(exc):  # wait and retry
                self._unwritten(batch, exc)
                return False
            return await self._write_each(batch, exc)  # a record the database refuses (a value out of its range)
        self._count(self.counters.written, len(batch))
        if self._failing or self._dropping:
            log.info("ledger: the %s database takes records again", self.store.backend)
        self._failing = self._dropping = False
        return True

    def _count(self, counter: Counter, n: int) -> None:
        """Settle `n` records of the batch being written (unless close already counted them all)."""
        if not self._abandoned:
            self._in_flight -= n
            counter.inc(n)

    def _unwritten(self, records: list[UsageRecord], exc: BaseException) -> None:
        """Records the database did not take: back in front of the queue, to be retried; past
        close's deadline nothing writes them any more: dropped and counted."""
        self.counters.errors.inc()
        if self._closed:
            if not self._abandoned:
                log.warning("ledger: %d usage records being written at shutdown could not be written (%s)",
                            len(records), exc)
            self._count(self.counters.dropped, len(records))
            return
        self._queue.extendleft(reversed(records))
        self._in_flight -= len(records)
        if not self._failing:
            self._failing = True
            log.warning("ledger: writing to the %s database failed (%s); %d records wait and are retried",
                        self.store.backend, exc, len(self._queue))

    async def _write_each(self, batch: list[UsageRecord], first: Exception) -> bool:
        """A batch the database refused for its data, not its state: write its records one by
        one, so one bad record (e.g. a token count past the column's range) is dropped and
        counted instead of stopping the ledger."""
        log.warning("ledger: the %s database refused a batch (%s: %s); writing its records one by one",
                    self.store.backend, type(first).__name__, first)
        for i, record in enumerate(batch):
            try:
                await self.store.write([record])
            except Exception as exc:  # noqa: BLE001 - told apart as in _write
                if _database_down(exc):  # it went down meanwhile: the rest waits
                    self._unwritten(batch[i:], exc)
                    return False
                self._count(self.counters.dropped, 1)  # this record: dropped, counted
                log.warning("ledger: dropped usage record %s, which the database refuses (%s: %s)",
                            record.request_id, type(exc).__name__, exc)
            else:
                self._count(self.counters.written, 1)
        return True

    async def _maybe_prune(self) -> None:
        now = self.clock()
        if now < self._next_prune or self._closing:
            return
        self._next_prune = now + _PRUNE_EVERY
        try:
            removed = await self.store.prune(now - self.config.retention_days * DAY)
        except (StoreError, OSError) as exc:
            log.warning("ledger: removing records older than %d days failed: %s", self.config.retention_days, exc)
            return
        if removed:
            log.info("ledger: removed %d records older than %d days", removed, self.config.retention_days)

    async def close(self, deadline: float) -> None:
        """Stop the writer, write what is queued within `deadline` seconds, close the store.
        A write under way at the deadline goes on (shielded); closing the store ends it, and
        its batch is counted by how it ends: written, or (being past the deadline) dropped."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._stop_and_flush(), deadline)
        except TimeoutError:
            pass
        self._closed = True
        if self._queue:
            self.counters.dropped.inc(len(self._queue))
            log.warning("ledger: %d usage records could not be written before shutdown", len(self._queue))
            self._queue.clear()
        await self.store.aclose()
        try:  # (PostgreSQL's write fails once its pool is closed; SQLite's close waits for its write)
            await asyncio.wait_for(self._idle.wait(), _LATE_WRITE_SECONDS)
        except TimeoutError:  # a write that outlives its store: counted now, and its end counts nothing
            self._abandoned = True
            self.counters.dropped.inc(self._in_flight)
            log.warning("ledger: %d usage records being written at shutdown could not be written",
                        self._in_flight)
            self._in_flight = 0

    async def _stop_and_flush(self) -> None:
        """The writer's task ends after the write it is doing (never cancelled mid-write: a
        SQLite write would still commit on its thread, and a batch put back would be written
        twice), then what is queued is written."""
        if self._task is not None:
            await asyncio.gather(asyncio.shield(self._task), return_exceptions=True)
        while self.opened and self._queue:
            # shielded for the same reason: at the deadline the write under way completes (and
            # counts) on its own, and only what is still queued is counted as dropped
            if not await asyncio.shield(self._write_batch()):
                await asyncio.sleep(_RETRY_MIN)


def _database_down(exc: Exception) -> bool:
    """A write failed for the database's state (down, unreachable, a timeout): retried. Anything
    else (Refused, or SQLite's OverflowError for an int past 2**63) is a record's data."""
    return isinstance(exc, StoreError | OSError) and not isinstance(exc, Refused)


def _said_if_died(task: asyncio.Task[None]) -> None:
    """The writer must never end but by `close`: if a bug ends it, say so (records then only queue)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("ledger: the writer stopped: %r; usage records are no longer written", task.exception())


LEDGER_RULES: dict[str, Combine] = {"tollway_ledger_queued": "sum", "tollway_ledger_lag_seconds": "max"}  # --workers N


class LedgerGauges(Collector):
    """tollway_ledger_queued and tollway_ledger_lag_seconds of this worker, read per scrape
    (with --workers N combined over the workers by LEDGER_RULES)."""

    def __init__(self, ledger: Callable[[], Ledger | None]) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ledger = self.ledger()
        yield GaugeMetricFamily("tollway_ledger_queued", "Usage records waiting to be written to the ledger.",
                                value=ledger.queued if ledger is not None else 0)
        yield GaugeMetricFamily("tollway_ledger_lag_seconds", "Age of the oldest usage record not yet written.",
                                value=ledger.lag() if ledger is not None else 0)

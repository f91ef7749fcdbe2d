"""The gateway's books: the ledger (store + writer) and the calendar budgets, built from one
config, started and closed with the worker, and plugged into the request pipeline.

    before_upstream: budgets.gate          after_response: budgets.charge, recorder

With no `store:` there is no ledger (the gateway says so in one line at start); budgets then
count from zero at each start.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from tollway.core.config import Config
from tollway.gateway.pipeline import AfterResponse, BeforeUpstream, Pipeline
from tollway.gateway.store import SchemaTooNew, StoreError, build_store
from tollway.gateway.store.budgets import BudgetKeeper
from tollway.gateway.store.ledger import Ledger, LedgerCounters
from tollway.gateway.store.recorder import Recorder

log = logging.getLogger("tollway")
_OPEN_AT_START = 5.0  # seconds the worker waits for the database at start before serving anyway
_READ_AGAIN = 5.0  # seconds between tries of a spend read that failed at start


class Books:
    def __init__(self, config: Config, config_path: str | None, counters: LedgerCounters,
                 reload_of: Books | None = None) -> None:
        """`reload_of`: the books a reload replaces; their ledger (or none) is kept, as the
        store: and ledger: sections apply at restart."""
        self.ledger: Ledger | None = reload_of.ledger if reload_of is not None else None
        if reload_of is None and config.store is not None and config.ledger.enabled:
            self.ledger = Ledger(build_store(config.store, config_path), config.ledger, counters)
        # The spend read at start, if still going (a slow database): kept across reloads, to cancel at close.
        self._reading: asyncio.Task[None] | None = reload_of._reading if reload_of is not None else None
        self.budgets = BudgetKeeper(config, sync_errors=counters.budget_store_errors.labels(backend="redis"))

    def pipeline(self) -> Pipeline:
        before: tuple[BeforeUpstream, ...] = (self.budgets.gate,) if self.budgets else ()
        after: list[AfterResponse] = []
        if self.budgets:
            after.append(self.budgets.charge)
        if self.ledger is not None:
            after.append(Recorder(self.ledger))
        return Pipeline(before_upstream=before, after_response=tuple(after))

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the database (waiting a little for it), rebuild the budgets' spend from it, and
        start the writer. A database that is down does not stop the gateway: the writer keeps
        trying and records wait. One migrated by a newer gateway does (SchemaTooNew)."""
        ledger = self.ledger
        if ledger is not None:  # (none: `tollway serve` said so in its start lines)
            self.budgets.await_ledger()  # (until read now, or when the database is back)
            started = loop.time()
            try:
                await asyncio.wait_for(ledger.open(), _OPEN_AT_START)
            except SchemaTooNew:
                raise
            except (StoreError, OSError, TimeoutError) as exc:
                log.warning("ledger: the %s database is not available at start (%s); serving anyway, "
                            "records wait for it", ledger.store.backend, exc or "timed out")
            if ledger.opened:
                # The same time bounds the spend read: a slow database (a lock held, a busy server)
                # held the worker up to the store's timeout per statement, then the read was given
                # up and the budgets counted from 0 for the period. It goes on in the background
                # instead, tried again until it reads (the owners await the ledger meanwhile).
                self._reading = loop.create_task(self._read_spend(ledger))
                await asyncio.wait({self._reading}, timeout=max(_OPEN_AT_START - (loop.time() - started), 0.0))
            # (the keeper in force then: reloads meanwhile may have brought owners of their own)
            ledger.start(loop, None if ledger.opened else (
                lambda: self.budgets.current().rebuild(ledger, add=True)))
        self.budgets.start(loop)

    async def _read_spend(self, ledger: Ledger) -> None:
        """Every budget's spend this period from the ledger, tried until the database answers
        (the keeper in force then: reloads meanwhile may have brought owners of their own)."""
        said = False
        while not await self._read_once(ledger):
            if not said:
                log.warning("budgets: cannot read this period's spend from the ledger yet; serving with what "
                            "this process counts, trying again every %g s", _READ_AGAIN)
                said = True
            await asyncio.sleep(_READ_AGAIN)
        if said:
            log.warning("budgets: this period's spend read from the ledger")

    async def _read_once(self, ledger: Ledger) -> bool:
        """One try of `_read_spend`. A failure the store does not wrap (a driver's own error, a
        bug) is logged and tried again like a database that does not answer: ending the task
        there would leave the budgets unread, and unshared with Redis, for the whole period."""
        try:
            return await self.budgets.current().read_ledger(ledger, retrying=True)
        except Exception:  # noqa: BLE001 - see above
            log.exception("budgets: reading this period's spend from the ledger failed")
            return False

    def adopt(self, previous: Books) -> Awaitable[None] | None:
        """A reload: keep the spend (the ledger was handed over at construction). Returns the
        work that reads the spend of owners new to budgets from the ledger (to run in the
        background), if there is any."""
        fresh = self.budgets.adopt(previous.budgets)
        if not fresh or self.ledger is None:
            return None
        self.budgets.await_ledger(fresh)
        if not self.ledger.opened:  # read when the database opens (`start`'s on_open)
            return None
        return self.budgets.rebuild(self.ledger, fresh)

    async def close(self, deadline: float) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
        await self.budgets.aclose()
        if self.ledger is not None:
            await self.ledger.close(deadline)

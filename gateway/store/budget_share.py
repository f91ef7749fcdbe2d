"""Calendar budgets shared by replicas in Redis (`rate_limits.backend: redis`): each replica
adds its charges to one counter per owner and period and reads everyone's total back every
`SYNC_SECONDS`. Its own module so a gateway without Redis never imports redis-py (~15 MB of
memory per worker with what it pulls in)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollway.core.ledger.budgets import Account, BudgetBook, Owner

log = logging.getLogger("tollway")
SYNC_SECONDS = 1.0
_REDIS_TIMEOUT = 0.5
_MAX_TTL = 33 * 86400  # the longest period (a month) and a day


class RedisShare:
    """Every replica's charges, summed in Redis: `{prefix}:budget:<kind>:<name>:<period start>`."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = aioredis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT)
        self.prefix = prefix
        self.pending: dict[str, float] = defaultdict(float)  # charged here, not yet added in Redis
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closing = False

    def name(self, owner: Owner, account: Account) -> str:
        return f"{{{self.prefix}}}:budget:{owner[0]}:{owner[1]}:{int(account.start)}"

    def add(self, charged: list[tuple[Owner, Account]], usd: float) -> None:
        for owner, account in charged:
            self.pending[self.name(owner, account)] += usd

    def start(self, loop: asyncio.AbstractEventLoop, book: BudgetBook, clock: Callable[[], float]) -> None:
        self._task = loop.create_task(self._run(book, clock))

    async def _run(self, book: BudgetBook, clock: Callable[[], float]) -> None:
        # (until `aclose`, whose cancel may land in redis-py, which can turn it into a connection
        # error that `sync` takes for an outage: the loop must not go on as if nothing was asked)
        while not self._closing:
            await self.sync(book, clock())
            if not self._closing:
                await asyncio.sleep(SYNC_SECONDS)

    async def sync(self, book: BudgetBook, now: float) -> None:
        """Add this replica's pending charges, and read every owner's total back. Each sync
        first offers Redis this replica's view (SET NX, without the pending charges, which the
        INCRBYFLOAT adds): the first replica up seeds each period from its ledger, and a Redis
        that lost its keys (a restart without persistence) gets the last known totals back.

        An owner still awaiting its ledger read seeds nothing and adds nothing, its charges kept
        pending: a counter started from this process's charges alone would hold the period's total
        without what the ledger holds, and SET NX would keep it so on every replica. Its total is
        still read: if another replica seeded it (from the same ledger), that total is the owner's
        and it waits no longer (`rebuild` then leaves it be). Else, once read, the seed is the
        ledger's sum; replicas racing to seed read the same ledger, and only the first SET lands."""
        for _, account in book.accounts.items():
            account.roll(now)
        accounts = list(book.accounts.items())
        names = [self.name(owner, account) for owner, account in accounts]
        pending = self._sendable(book)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, (_, account) in zip(names, accounts, strict=True):
                    if not account.awaiting_ledger:
                        pipe.set(key, repr(max(account.spent - pending.get(key, 0.0), 0.0)), nx=True,
                                 ex=_ttl(account, now))
                for key, usd in pending.items():
                    pipe.incrbyfloat(key, usd)
                    pipe.expire(key, _MAX_TTL)
                for key in names:
                    pipe.get(key)
                results = await pipe.execute()
        except BaseException as exc:
            self.take(pending)  # not added: kept for the next sync
            if not isinstance(exc, (RedisError, OSError)):
                raise
            if not self._failing:
                self._failing = True
                log.warning("budgets: Redis is unavailable (%s); each replica counts its own spend until it is back",
                            type(exc).__name__)
            return
        self._failing = False
        for key, (_, account), value in zip(names, accounts, results[-len(names):] if names else [], strict=True):
            if value is not None:
                account.spent = float(value) + self.pending.get(key, 0.0)
                account.awaiting_ledger = False  # (seeded by a replica that read the ledger: its pending goes next)

    def _sendable(self, book: BudgetBook) -> dict[str, float]:
        """The pending charges this sync adds, taken out of `pending`: all but those of owners
        awaiting the ledger."""
        held = {self.name(owner, account) for owner, account in book.accounts.items() if account.awaiting_ledger}
        pending, self.pending = self.pending, defaultdict(float)
        for key in held & pending.keys():
            self.pending[key] = pending.pop(key)
        return pending

    def take(self, charges: dict[str, float]) -> None:
        """Charges to add in Redis with this replica's next sync (its own, or a retired share's)."""
        for key, usd in charges.items():
            self.pending[key] += usd

    async def aclose(self, book: BudgetBook, heir: RedisShare | None = None) -> None:
        """Stop syncing; the charges not yet in Redis go to `heir` (the share a reload put in
        this one's place, which keeps syncing), else are added now."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if heir is not None:
            heir.take(self.pending)
            self.pending.clear()
        elif self.pending:
            await self.sync(book, time.time())
        await self.client.aclose()


def _ttl(account: Account, now: float) -> int:
    """Keep a period's counter a day past its end (reports read the ledger, not Redis)."""
    return int(account.end - now) + 86400

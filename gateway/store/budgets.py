"""Calendar budgets at run time: the gate before the upstream call, the charge after it, the
spend rebuilt from the ledger at start and, with `rate_limits.backend: redis`, shared by
every replica (tollway.gateway.store.budget_share).

The decisions are `tollway.core.ledger.budgets.BudgetBook`'s; this module feeds it. A
request's check is a dict lookup in this process: with Redis, each replica adds its charges
to one counter per owner and period (INCRBYFLOAT) and reads everyone's total back every
`budget_share.SYNC_SECONDS`, so a replica sees the others' spend at most that late (docs/ledger.md).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter

from tollway.core.config import Config
from tollway.core.errors import GatewayError
from tollway.core.ledger.budgets import Account, BudgetBook, Owner
from tollway.core.ledger.record import UsageRecord
from tollway.core.ledger.report import SpendQuery, merge
from tollway.gateway.admission import Admitted
from tollway.gateway.exchange import Exchange
from tollway.gateway.store import StoreError
from tollway.gateway.store.ledger import Ledger

if TYPE_CHECKING:
    from tollway.gateway.store.budget_share import RedisShare

log = logging.getLogger("tollway")


class BudgetKeeper:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time, sync_errors: Counter | None = None) -> None:
        """`sync_errors`: counts each failed sync with the shared store (Redis), if any."""
        self.clock = clock
        self.book = BudgetBook.of(config, clock())
        self.share: RedisShare | None = None
        self.successor: BudgetKeeper | None = None  # the keeper a reload put in this one's place
        if self.book and config.rate_limits.backend == "redis":
            from tollway.gateway.store.budget_share import RedisShare  # (redis-py: ~15 MB, when used)
            self.share = RedisShare(config.rate_limits.redis_url, config.rate_limits.key_prefix, sync_errors)

    def __bool__(self) -> bool:
        return bool(self.book)

    async def gate(self, req: Admitted, ex: Exchange) -> None:
        """before_upstream: refuse (429 insufficient_quota) a key or team that spent its budget."""
        refusal = self.book.refusal(ex.key_name, ex.team, self.clock())
        if refusal is not None:
            cache = ex.response_cache  # a cache hit spends nothing: the lookup decides (admission.forward)
            if cache is not None and cache.may_answer(req, ex.api):
                ex.deferred = ex.deferred or refusal
                return
            raise refusal

    def claim(self, ex: Exchange, usd: float) -> GatewayError | None:
        """Hold `usd` of the request's budgets for its running stream (tollway.gateway.limits.
        stream_stop): None when held (given back by `charge`), else the 429 to stop it with."""
        refusal = self.book.claim(ex.key_name, ex.team, usd, self.clock())
        if refusal is None:
            ex.budget_held += usd
        return refusal

    def charge(self, ex: Exchange) -> None:
        """after_response: add what the request cost to its key's and team's periods (and give
        back what its stream held of them meanwhile)."""
        if ex.budget_held:
            self.book.release(ex.key_name, ex.team, ex.budget_held)
            ex.budget_held = 0.0
        if ex.cost_usd:
            # A request admitted before a reload ends with this hook of the keeper it started
            # with, whose Redis share the reload closed: a charge left there would never reach
            # Redis, and the next sync would set the shared account back to Redis's total. The
            # keeper in force holds the budgets in force and the share that runs.
            self.current().add(ex.key_name, ex.team, ex.cost_usd, ex.ts)

    def add(self, key: str | None, team: str | None, usd: float, arrived: float | None = None) -> None:
        """Charge `usd` to the period `arrived` in (a request of a period already over: to none)."""
        charged = self.book.charge(key, team, usd, self.clock(), arrived)
        if self.share is not None:
            self.share.add(charged, usd)

    def current(self) -> BudgetKeeper:
        """This keeper, or the last of the ones reloads put in its place."""
        keeper = self
        while keeper.successor is not None:
            keeper = keeper.successor
        return keeper

    def adopt(self, previous: BudgetKeeper) -> set[Owner]:
        """After a reload: an owner whose budget keeps its period keeps its account, the same
        object (a request admitted before the reload charges it when it ends), with the new
        amount. Returns the owners that are new or changed period: their spend is the ledger's."""
        previous.successor = self  # its requests still in flight charge this keeper (`charge`)
        fresh = set()
        for owner, account in self.book.accounts.items():
            old = previous.book.accounts.get(owner)
            if old is not None and old.budget.period == account.budget.period:
                old.budget = account.budget
                self.book.accounts[owner] = old
            else:
                fresh.add(owner)
        return fresh

    def await_ledger(self, owners: set[Owner] | None = None) -> None:
        """Hold the owners' (`None`: all) shared counters back until `rebuild` read their spend
        this period from the ledger: a counter seeded before that would leave it out."""
        for owner, account in self.book.accounts.items():
            if owners is None or owner in owners:
                account.awaiting_ledger = True

    async def rebuild(self, ledger: Ledger, owners: set[Owner] | None = None, add: bool = False) -> None:
        """Each owner's spend this period, from the ledger (what survived a restart, and what
        requests just answered left in its queue); `owners` limits it to those. `add`: the
        database's sum is added to what was counted meanwhile (the database came back after the
        gateway started: nothing this process charged is in it yet). A database that cannot be
        read leaves the owners counting from what this process saw."""
        await self.read_ledger(ledger, owners, add)

    async def read_ledger(self, ledger: Ledger, owners: set[Owner] | None = None, add: bool = False,
                          retrying: bool = False) -> bool:
        """`rebuild`, saying whether the database was read: if not, with `retrying` (the caller
        reads again later) the owners still await the ledger."""
        now = self.clock()
        by_start: dict[tuple[str, float], list[tuple[Owner, Account]]] = defaultdict(list)
        for owner, account in self.book.accounts.items():
            if owners is not None and owner not in owners:
                continue
            account.roll(now)
            by_start[(owner[0], account.start)].append((owner, account))
        read = False
        try:
            # Writes held: a record is in the database or in the queue then, never in both or
            # neither (a budget added right after requests must count their queued records)
            async with ledger.writes_held():
                written = [(accounts, merge(await ledger.store.spend(SpendQuery((kind,), start, now + 1))))
                           for (kind, start), accounts in by_start.items()]
                queued = _queued_spend(ledger.unwritten(), by_start.values(), now + 1)
            for accounts, spent in written:
                for owner, account in accounts:
                    sums = spent.get((owner[1],))
                    ledger_usd = sums[-1] if sums else 0.0  # cost_usd is the last sum
                    floor = ledger_usd + queued.get(owner, 0.0)
                    # The spend is at least this, whatever a shared total read before or after
                    # says: a counter left by a budget removed and added back this period missed
                    # the spend in between (the syncs raise it to this, budget_share.SEED).
                    account.ledger_floor = floor
                    # (`add` only to this process's own charges: a shared total read meanwhile
                    # holds the ledger's already, and adding it would count it twice; the queue
                    # holds records of these charges, and of some before the budget was added)
                    adding = add and account.awaiting_ledger
                    account.spent = max(account.spent + ledger_usd, floor) if adding else max(account.spent, floor)
            read = True
        except StoreError as exc:
            if retrying:
                return False
            log.warning("budgets: cannot read this period's spend from the ledger (%s); counting from what "
                        "this process charges", exc)
        finally:  # read or not (then counting from what this process saw), the counters may be shared
            if read or not retrying:
                for accounts in by_start.values():
                    for _, account in accounts:
                        account.awaiting_ledger = False
        return True

    def hand_over(self) -> None:
        """Retired by a swap: hand what this keeper's share has not sent to Redis yet to the share
        of the keeper in force, before that one starts syncing (RedisShare.hand_over)."""
        heir = self.current()
        if self.share is not None and heir is not self and heir.share is not None:
            self.share.hand_over(heir.share)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.share is not None:
            self.share.start(loop, self.book, self.clock)

    async def aclose(self) -> None:
        """Stop sharing: at a reload (a successor), hand what is not in Redis yet to the share in
        force; at shutdown, add it in Redis."""
        if self.share is not None:
            heir = self.current()
            await self.share.aclose(self.book, heir.share if heir is not self else None)


def _queued_spend(records: Iterable[UsageRecord], owners: Iterable[list[tuple[Owner, Account]]],
                  until: float) -> dict[Owner, float]:
    """What the records not yet in the database cost each owner this period (as the database's
    sum would count them once written: by the request's arrival in [period start, `until`))."""
    wanted = {owner: account for accounts in owners for owner, account in accounts}
    spent: dict[Owner, float] = defaultdict(float)
    for record in records:
        if not record.cost_usd:
            continue
        for kind, name in (("key", record.key), ("team", record.team)):
            account = wanted.get((kind, name)) if name is not None else None
            if account is not None and name is not None and account.start <= record.ts < until:
                spent[(kind, name)] += record.cost_usd
    return spent

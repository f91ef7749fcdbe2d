"""Calendar budgets shared by replicas in Redis (`rate_limits.backend: redis`): each replica
adds its charges to one counter per owner and period and reads everyone's total back every
`SYNC_SECONDS`. Its own module so a gateway without Redis never imports redis-py (~15 MB of
memory per worker with what it pulls in).

A timeout does not say whether Redis added a sync's charges: a reply slower than the socket
timeout comes from a call that ran. So the charges go in numbered batches, added by one Lua
script (`ADD_ONCE`) that first records the batch's number in this share's record
`{<prefix>}:budget-batch:<random id>` and does nothing for a number already recorded. A batch
that got no answer is kept (`unsure`) and sent again, with its number, until one comes: Redis
adds it exactly once. (The bucket store does the same, gateway/limits/redis_store.py.) The
counter stays one plain number, so the seeding below (`SEED`) and the reads keep their meaning;
per-replica totals summed on read would not survive a Redis that lost its keys, as a seed then
holds the other replicas' spend already. Until an unsure batch is answered no new one is made
(charges wait a sync longer): there is at most one per share, and the record needs only the last
number. It expires with the counters, `_MAX_TTL` after the last batch; a Redis restarted without
persistence lost the counters with it, and the seed leaves every unsure batch out."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from tollway.core.ledger.budgets import Account, BudgetBook, Owner

log = logging.getLogger("tollway")
SYNC_SECONDS = 1.0
_REDIS_TIMEOUT = 0.5
_MAX_TTL = 33 * 86400  # the longest period (a month) and a day

# Each replica's view of a counter is a floor of the owner's spend this period (the ledger's sum,
# or a total it read back); the counter is raised to the highest floor, never lowered. A missing
# counter (a new period, a Redis that lost its keys) is started from it, as SET NX did; one left
# from a budget removed and added back in its period, which missed what was spent without it, is
# raised to the ledger's sum that the budget added back read (SET NX kept the stale one).
# A counter started again (Redis lost its keys) holds what it was started from (its base) plus what
# was added since, which no view read before holds. So each life of a counter has a generation
# (`<counter>:gen` = "<generation> <base>"), and a replica's last read of a counter says which
# life it read: a view of an earlier life is a floor of the base, not of the counter (compared
# with the counter, the highest view would drop what others added since the start: lost for the
# rest of the period). Raising the counter to a floor raises its base alike.
# KEYS: per counter, the counter and its generation key. ARGV: per counter, its floor, the last
# total this replica read ('' if none), that read's generation, and the TTL.
SEED = """
local t = redis.call('TIME')
local born = t[1] .. '.' .. t[2]
for i = 1, #KEYS / 2 do
  local counter, meta = KEYS[2 * i - 1], KEYS[2 * i]
  local floor, view, seen, ttl = tonumber(ARGV[4 * i - 3]), tonumber(ARGV[4 * i - 2]), ARGV[4 * i - 1], ARGV[4 * i]
  local total = tonumber(redis.call('GET', counter) or '')
  local gen, base = string.match(redis.call('GET', meta) or '', '^(%S+) (%S+)$')
  base = tonumber(base)
  local changed = false
  if total == nil then
    total, gen, base, changed = floor, born, floor, true
  elseif base == nil then  -- (its generation expired, or a gateway before generations started it)
    gen, base, changed = born, total, true
  end
  if view ~= nil and seen ~= gen and view > base then  -- read in an earlier life: what it holds and this life does not
    total, base, changed = total + (view - base), view, true
  end
  if floor > total then
    total, base, changed = floor, base + (floor - total), true
  end
  if changed then
    redis.call('SET', counter, string.format('%.17g', total), 'EX', ttl)
    redis.call('SET', meta, gen .. ' ' .. string.format('%.17g', base), 'EX', ttl)
  end
end
return 0
"""

# KEYS[1]: the record of the share that numbered the batch, KEYS[2..]: the counters.
# ARGV[1]: the batch's number, ARGV[2]: the TTL of the record and counters, ARGV[3..]: the amounts.
ADD_ONCE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 2, #KEYS do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""


@dataclass(eq=False)
class Batch:
    """Charges sent to Redis together, under one number of one share's record."""
    record: str
    number: int
    charges: dict[str, float]


class RedisShare:
    """Every replica's charges, summed in Redis: `{prefix}:budget:<kind>:<name>:<period start>`."""

    def __init__(self, url: str, prefix: str, errors: Counter | None = None) -> None:
        """`errors`: counts each sync that failed (tollway_budget_store_errors_total)."""
        self.errors = errors
        self.client = aioredis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT)
        self.prefix = prefix
        self.record = f"{{{prefix}}}:budget-batch:{secrets.token_hex(8)}"
        self.numbered = 0
        self.fresh: dict[str, float] = defaultdict(float)  # charged here, in no batch yet
        self.unsure: list[Batch] = []  # sent without an answer (or not sent): added in Redis or not
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closing = False
        self._handed_over = False  # its charges are another share's to send (`hand_over`)
        self.seen: dict[str, tuple[bytes, bytes]] = {}  # counter -> (its total, its generation) as last read

    def name(self, owner: Owner, account: Account) -> str:
        return f"{{{self.prefix}}}:budget:{owner[0]}:{owner[1]}:{int(account.start)}"

    @property
    def pending(self) -> dict[str, float]:
        """What this replica charged that Redis is not known to hold, per counter."""
        pending = defaultdict(float, self.fresh)
        for batch in self.unsure:
            for key, usd in batch.charges.items():
                pending[key] += usd
        return pending

    def add(self, charged: list[tuple[Owner, Account]], usd: float) -> None:
        for owner, account in charged:
            self.fresh[self.name(owner, account)] += usd

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
        first offers Redis this replica's view (`SEED`: a counter below it is raised to it; the
        view is without the pending charges, which its batches add, each once: `ADD_ONCE`): the
        first replica up seeds each period from its ledger, a Redis that lost its keys (a restart
        without persistence) gets the last known totals back, and a budget added back in its
        period raises the counter its first life left to the ledger's sum.

        An owner still awaiting its ledger read seeds nothing and adds nothing, its charges kept
        pending: a counter started from this process's charges alone would hold the period's total
        without what the ledger holds, and SET NX would keep it so on every replica. Its total is
        still read: if another replica seeded it (from the same ledger), that total is the owner's
        and it waits no longer (`rebuild` then leaves it be). Else, once read, the seed is the
        ledger's sum; replicas racing to seed read the same ledger, and the highest seed stays."""
        for _, account in book.accounts.items():
            account.roll(now)
        accounts = list(book.accounts.items())
        names = [self.name(owner, account) for owner, account in accounts]
        starts = [account.start for _, account in accounts]
        batches = self._sendable(book)
        unsent = self.pending  # (the seed leaves it out: the batches add theirs, the rest comes later)
        seeds = [(key, account) for key, (_, account) in zip(names, accounts, strict=True) if not account.awaiting_ledger]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                if seeds:
                    floors = [arg for key, account in seeds
                              for arg in (repr(max(account.spent - unsent.get(key, 0.0), 0.0)),
                                          *self.seen.get(key, (b"", b"")), _ttl(account, now))]
                    pipe.eval(SEED, 2 * len(seeds), *(k for key, _ in seeds for k in (key, _gen_key(key))), *floors)
                for batch in batches:
                    keys, amounts = list(batch.charges), [repr(usd) for usd in batch.charges.values()]
                    pipe.eval(ADD_ONCE, 1 + len(keys), batch.record, *keys, batch.number, _MAX_TTL, *amounts)
                for key in names:
                    pipe.get(key)
                    pipe.get(_gen_key(key))
                results = await pipe.execute()
        except (RedisError, OSError) as exc:  # (the batches stay unsure: sent again next sync)
            if self.errors is not None:
                self.errors.inc()
            if not self._failing:
                self._failing = True
                log.warning("budgets: Redis is unavailable (%s); each replica counts its own spend until it is back",
                            type(exc).__name__)
            return
        self._failing = False
        if self._handed_over:  # (a sync in flight at the hand-over: what it read leaves out the heir's pending)
            return
        self.unsure = [batch for batch in self.unsure if batch not in batches]  # (added, now or before)
        pending = self.pending
        reads = results[len(results) - 2 * len(names):]
        self.seen = {}  # (only the counters of the accounts now: a period gone is forgotten)
        for key, (_, account), start, value, meta in zip(names, accounts, starts, reads[::2], reads[1::2], strict=True):
            if value is not None and meta is not None:
                self.seen[key] = (value, meta.split(b" ", 1)[0])
            if account.start != start:  # (a request moved it to a new period meanwhile: the total read is the last one's)
                continue
            if value is not None:  # (never below the ledger's spend: a counter may miss some, see SEED)
                account.spent = max(float(value) + pending.get(key, 0.0), account.ledger_floor)
                account.awaiting_ledger = False  # (seeded by a replica that read the ledger: its pending goes next)

    def _sendable(self, book: BudgetBook) -> list[Batch]:
        """The batches this sync sends: the unsure ones again, else one new of the fresh charges
        of owners not awaiting the ledger (taken out of `fresh`)."""
        if not self.unsure:
            held = {self.name(owner, account) for owner, account in book.accounts.items() if account.awaiting_ledger}
            charges = {key: usd for key, usd in self.fresh.items() if key not in held}
            if charges:
                self.fresh = defaultdict(float, {key: self.fresh[key] for key in held & self.fresh.keys()})
                self.numbered += 1
                self.unsure.append(Batch(self.record, self.numbered, charges))
        return list(self.unsure)

    def hand_over(self, heir: RedisShare) -> None:
        """Stop syncing and give `heir` (the share a reload or a key change put in this one's
        place) the charges not known to be in Redis, now: before `heir` syncs. Its seed is what
        this replica has seen spent less what `heir` still has to add, so charges left here
        meanwhile would be seeded into the counter and then added again by their batch."""
        self._closing = self._handed_over = True
        heir.inherit(self)
        heir._failing = heir._failing or self._failing  # (an outage going on is not a new incident to log)

    def inherit(self, retired: RedisShare) -> None:
        """Send a retired share's charges with this one's syncs (its unsure batches keep their
        record and number: Redis may have added them), and offer what it read as this one's view
        until this one reads: the seed needs it to tell a counter Redis started again (a restart
        without persistence) from the one that view was read in (SEED), or what others added to
        the new one is dropped."""
        for key, usd in retired.fresh.items():
            self.fresh[key] += usd
        self.unsure.extend(retired.unsure)
        for key, view in retired.seen.items():
            self.seen.setdefault(key, view)
        retired.fresh.clear()
        retired.unsure.clear()
        retired.seen.clear()  # (handed once: a later inherit, at aclose, must not offer it again)

    async def aclose(self, book: BudgetBook, heir: RedisShare | None = None) -> None:
        """Stop syncing; the charges not yet in Redis go to `heir` (the share a reload put in
        this one's place, which keeps syncing), else are added now."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if heir is not None:
            heir.inherit(self)
        elif self.pending:
            await self.sync(book, time.time())
        await self.client.aclose()


def _gen_key(counter: str) -> str:
    """The key of a counter's generation and base (see SEED)."""
    return counter + ":gen"


def _ttl(account: Account, now: float) -> int:
    """Keep a period's counter a day past its end (reports read the ledger, not Redis)."""
    return int(account.end - now) + 86400

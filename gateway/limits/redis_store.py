"""The shared bucket store: token buckets in Redis, decided by one Lua script, in batches.

Theory of operation
-------------------
Every worker of every replica talks to one Redis. A bucket is a hash `{<prefix>}:b:<bucket id>`
holding its level `l`, the time of that level `t` (Redis server time, so every gateway
agrees on the clock) and the capacity it was written under `c`. A concurrency gauge's level is
its free slots and never refills, so when its limit changes (a reload; gateways mid-rollout)
the script moves the level by the change: what is in flight is kept, not what is free.

The Lua script `BUCKETS_LUA` runs the same arithmetic as the `BucketTable` kernel: lazy
continuous refill, all-or-nothing reservation over a request's buckets, settles that may
leave debt. A script runs atomically, so no two decisions interleave.

Cost: a round trip and redis-py's ~40 us of CPU per call would halve a gateway doing ~100 us
per request. So calls are *batched*: reservations and settles are queued, and a drain task
sends everything queued as ONE `EVALSHA` (ops applied in order inside the script), while new
requests queue up behind it, so ops reach Redis in the order they were made. Under load a call
carries many decisions; a lone request pays
one call. Settles never wait: they ride along with the next batch, or go on their own after
`SETTLE_DELAY` when no reservation comes. With `leasing` (how the gateway runs it), most
requests make no call at all: they are decided from quota this process leased in slices
(gateway/limits/lease.py, which also states the overshoot bound); R ops reserve and lease in
one go, g ops top leases up in the background.

Keys: every key of a deployment shares one hash tag, `{<prefix>}`, so a whole batch (which
spans keys, teams and models) is one slot on Redis Cluster and one atomic script call. The
price is that the limits of one deployment live on one shard (see docs/limits.md).

Expiry: a bucket's key expires when it would be full again (a full bucket and a missing one
mean the same), so idle buckets cost no memory. A concurrency gauge expires `GAUGE_TTL` after
its last change, which also frees slots held by a gateway that died mid-request. Only buckets an
op changed are written back: a refusal renews no expiry (retries cannot keep a gauge alive).

Store errors (connection refused, timeout): the batch fails, waiting reservations get
`StoreUnavailable` (the limiter applies `on_store_error`), queued settles are held (up to
`MAX_HELD`) and sent when Redis is back. An incident is logged once when it starts and once
when Redis answers again; while it lasts, Redis is retried at most every `RETRY_INTERVAL` and
decisions in between fail fast.

A timeout does not say whether the script ran: a reply slower than `SOCKET_TIMEOUT` comes from
a script that did. So every batch carries a number, and the script, before its first bucket
write, records in this process's record `{<prefix>}:batch:<random id>` the last number it ran
and what that batch took (per reservation taken or not, per lease its grants). A batch that
failed without an answer is kept apart (`_unsure`) and, before anything else is sent, the
store asks Redis about it (the script's '?' call): if it ran, its settles landed and are not
sent again, and what its reservations and leases took is given back (their requests were
decided by on_store_error, and nothing else would return it); if it did not, the question
fences it off (a batch reaching Redis after it is refused: 'F') and its settles are sent. The
record expires `GAUGE_TTL_MS` after the last batch: after an outage longer than that (or a
Redis restart without persistence) a batch cannot be told apart from one that never ran.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tollway.core.kernels import Gate
from tollway.core.limits import policy as limits
from tollway.core.limits.policy import Bucket, LimitPolicy, Plan
from tollway.gateway.limits.lease import LEASE_TTL, LeaseBook
from tollway.gateway.limits.limiter import StoreUnavailable
from tollway.gateway.telemetry.metrics import Metrics

log = logging.getLogger("tollway")

SETTLE_DELAY = 0.002    # s: how long a settle waits for a reservation batch to ride with
MAX_OPS = 512           # ops per script call; longer queues go in several calls
MAX_IN_FLIGHT = 1       # script calls in flight; 1 keeps ops in order (2 measured no faster)
RETRY_INTERVAL = 1.0    # s: during an incident, how often Redis is tried again
SOCKET_TIMEOUT = 0.5    # s: a decision never waits longer than this for Redis
GAUGE_TTL_MS = 3_600_000
MAX_HELD = 10_000       # settles kept through an incident; older ones are dropped

BUCKETS_LUA = """
-- KEYS: the buckets this batch touches, then last this process's batch record (a hash).
-- ARGV[1] now ('' = Redis TIME); ARGV[2] gauge ttl ms (also how long the batch record lasts);
-- ARGV[3] 'capacity refill' per bucket key, space-separated, in KEYS order;
-- ARGV[4] the ops, space-separated: kind, n, then per bucket: key index, amount[, want]. Kinds:
--   'r' reserve all amounts or none;  'c' charge signed amounts (may leave debt);
--   'R' reserve like 'r', then (only if taken) lease up to `want` more of each bucket;
--   'g' lease up to `amount` of each bucket (whatever is there, no debt).
--   An op with an amount or want that is not a finite number changes nothing (r, R: refused).
-- ARGV[5] the batch's number (increasing per process).
-- Returns one string: per r op '1'|'0' (taken?) and n levels after it; per R op the same plus
-- n grants; per g op n levels and n grants. (c ops return nothing.) 'F' if a batch of this
-- number or later was already seen or asked about (see below): then nothing was changed.
-- With ARGV[4] = '?', asks whether batch ARGV[5] ran: 'R' and what it took (its r/R ops'
-- '1'|'0', its R/g ops' grants) if it did, else 'N', and it never will ('F' if it comes late).
-- (Whole batches travel as two strings: redis-py spends ~2 us per argument it packs.)
local record, seq = KEYS[#KEYS], tonumber(ARGV[5])
local gauge_ttl = tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', record, 's')) or -1
if ARGV[4] == '?' then
  if last == seq then
    local took = redis.call('HGET', record, 'u') or ''
    if took == 'N' then return 'N' end  -- asked before: it had not run
    return 'R ' .. took
  end
  if last > seq then return 'U' end  -- a later one ran: unknown (not reached: a process asks before it sends on)
  redis.call('HSET', record, 's', seq, 'u', 'N')
  redis.call('PEXPIRE', record, gauge_ttl)
  return 'N'
end
if last >= seq then return 'F' end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local max_ttl = 34560000000  -- ms, 400 days: past a window's refill (at most 366d), and an integer PEXPIRE takes
local caps, rates = {}, {}
do
  local i, tok = 1, string.gmatch(ARGV[3], '%S+')
  for cap in tok do
    caps[i], rates[i] = tonumber(cap), tonumber(tok())
    i = i + 1
  end
end
local state = {}

local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

-- s = {level, time, capacity, changed}: only a bucket an op changed is written back (a refusal
-- must not renew a gauge's expiry, or retries would keep a locked-out key locked).
local function bucket(i)
  local s = state[i]
  local cap, rate = caps[i], rates[i]
  if not s then
    local v = redis.call('HMGET', KEYS[i], 'l', 't', 'c')
    local level, stamp, was = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
    if not finite(level) or not finite(stamp) then level, stamp = cap, now  -- (a NaN stored before)
    elseif rate == 0 and finite(was) then level = level + (cap - was) end  -- a gauge keeps what is in flight
    if level > cap then level = cap end
    s = {level, stamp, cap, false}
    state[i] = s
  end
  if now > s[2] then
    if rate > 0 then s[1] = math.min(cap, s[1] + (now - s[2]) * rate) end
    s[2] = now
  end
  return s
end

local out, took = {}, {}
local function grant(held, wants, n)
  for j = 1, n do
    local g = math.max(0, math.min(wants[j], held[j][1]))
    held[j][1] = held[j][1] - g
    if g > 0 then held[j][4] = true end
    wants[j] = g
  end
end
local tok = string.gmatch(ARGV[4], '%S+')
for kind in tok do
  local n = tonumber(tok())
  local held, amounts, wants, fits, valid = {}, {}, {}, true, true
  for j = 1, n do
    local s = bucket(tonumber(tok()))
    held[j], amounts[j] = s, tonumber(tok())
    if kind == 'R' then wants[j] = tonumber(tok()) end
    if not finite(amounts[j]) or (kind == 'R' and not finite(wants[j])) then valid = false
    elseif s[1] < amounts[j] then fits = false end
  end
  fits = fits and valid
  if kind == 'r' or kind == 'R' then
    if fits then
      for j = 1, n do
        held[j][1] = held[j][1] - amounts[j]
        if amounts[j] ~= 0 then held[j][4] = true end
      end
    end
    out[#out + 1] = fits and '1' or '0'
    took[#took + 1] = out[#out]
    if kind == 'R' then
      if not fits then for j = 1, n do wants[j] = 0 end end
      grant(held, wants, n)
    end
  elseif kind == 'g' then
    wants = amounts
    if not valid then for j = 1, n do wants[j] = 0 end end
    grant(held, wants, n)
  elseif valid then
    for j = 1, n do
      if amounts[j] ~= 0 then
        held[j][1] = math.min(held[j][3], held[j][1] - amounts[j])
        held[j][4] = true
      end
    end
  end
  if kind ~= 'c' then
    for j = 1, n do out[#out + 1] = string.format('%.17g', held[j][1]) end
  end
  if kind == 'R' or kind == 'g' then
    for j = 1, n do
      out[#out + 1] = string.format('%.17g', wants[j])
      took[#took + 1] = out[#out]
    end
  end
end

-- The record first: a script stopped by an error keeps the writes it made before, so a batch
-- that changed a bucket is always one the record says ran.
redis.call('HSET', record, 's', seq, 'u', table.concat(took, ' '))
redis.call('PEXPIRE', record, gauge_ttl)
for i, s in pairs(state) do
  if s[4] then
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', s[1]), 't', string.format('%.17g', s[2]),
               'c', string.format('%.17g', s[3]))
    local ttl = gauge_ttl
    if rates[i] > 0 then ttl = math.min(math.ceil((caps[i] - s[1]) / rates[i] * 1000) + 1000, max_ttl) end
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return table.concat(out, ' ')
"""
BUCKETS_SHA = hashlib.sha1(BUCKETS_LUA.encode()).hexdigest()

# What the store keeps per plan (RedisBuckets.bind): the plan, its buckets' Redis keys, their
# shapes for the script, and its lease slots as a Gate (None when the plan does not lease).
_Entry = tuple[Plan, tuple[str, ...], list[str], "Gate | None"]
_Result = tuple[bool, tuple[float, ...]]  # what an r, R or g op answers: (taken, the buckets' levels)


class _Op:
    """One queued op (see BUCKETS_LUA), already in the script's argument form: `shapes` and
    `amounts` per bucket, `wants` per bucket for an R op, and the lease slots for R and g ops.
    `future` gets the result of r, R and g ops; c ops have none."""

    __slots__ = ("kind", "keys", "shapes", "amounts", "wants", "slots", "future")

    def __init__(self, kind: str, keys: tuple[str, ...], shapes: list[str], amounts: tuple[float, ...],
                 future: asyncio.Future[_Result] | _TopUp | None = None, wants: tuple[float, ...] | None = None,
                 slots: tuple[int, ...] | list[int] | None = None) -> None:
        self.kind, self.keys, self.shapes, self.amounts = kind, keys, shapes, amounts
        self.future, self.wants, self.slots = future, wants, slots


class _TopUp:
    """The result slot of a background lease top-up (a g op): nobody awaits it."""

    __slots__ = ("book", "slots", "wants")

    def __init__(self, book: LeaseBook, slots: list[int], wants: tuple[float, ...]) -> None:
        self.book, self.slots, self.wants = book, slots, wants

    def done(self) -> bool:
        return False

    def set_result(self, result: _Result) -> None:
        return None  # the grants were booked by _run

    def set_exception(self, exc: BaseException) -> None:
        self.book.failed(self.slots, self.wants)  # ask again once Redis answers


class RedisBuckets:
    """A bucket store in Redis, shared by every gateway process that uses the same prefix."""

    backend = "redis"

    def __init__(self, url: str, prefix: str, metrics: Metrics, client: aioredis.Redis | None = None,
                 leasing: bool = False) -> None:
        self.settings: tuple[str, ...] = ("redis", url, prefix)
        self.prefix = prefix
        # No retries by the client: a call whose reply timed out may have run, and sent again it
        # would apply twice (the store finds out instead: _unsure).
        self.client = client or aioredis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0))
        self.metrics = metrics
        self.now: float | None = None  # tests pin the script's clock; None = Redis TIME
        self._queue: list[_Op] = []
        self._drains: set[asyncio.Task[None]] = set()  # batches in flight (at most MAX_IN_FLIGHT)
        self._settle_timer: asyncio.TimerHandle | None = None
        self._book = LeaseBook() if leasing else None  # see gateway/limits/lease.py
        self._return_timer: asyncio.TimerHandle | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._held = 0  # settles kept for later during an incident
        # Every batch is numbered and the script records the last number it ran in this
        # process's record, so a batch whose reply was lost can be asked about (see _resolve).
        self._record = f"{{{prefix}}}:batch:{secrets.token_hex(8)}"
        self._seq = 0
        self._unsure: tuple[int, list[_Op]] | None = None  # a batch sent whose outcome is not known yet
        self._sending = asyncio.Lock()  # one batch (or question) at a time, so numbers reach Redis in order
        self._closed = False  # aclose() ran: what comes after (late settles) reopens a connection, closed again

    def configure(self, policy: LimitPolicy) -> None:
        if self._book is not None:  # leases of the old shapes go back; changed buckets start over
            self._surrender()
            self._book.reconfigure(policy.buckets, time.monotonic())

    def key(self, bucket_id: str) -> str:
        """The Redis key of a bucket: one hash tag for the whole deployment."""
        return f"{{{self.prefix}}}:b:{bucket_id}"

    def bind(self, plan: Plan) -> _Entry:
        """The plan's Redis keys, its shapes for the script and its lease gate."""
        keys = tuple(self.key(b.id) for b in plan.buckets)
        shapes = [_shape(b) for b in plan.buckets]
        return plan, keys, shapes, self._book.gate(plan, time.monotonic()) if self._book is not None else None

    def decide(self, entry: _Entry, demand: tuple[float, ...]) -> tuple[bool, tuple[float, ...]] | None:
        """Decide from this process's leases when they cover the request (admitted, levels as
        Redis's last answer plus what is held here); None sends it to Redis."""
        book = self._book
        gate = entry[3]
        if book is None or gate is None:
            return None
        got = book.decide(gate, demand)
        if got is None:
            return None
        levels, low = got
        if low:
            self._top_up(low)
        return True, levels

    async def take(self, entry: _Entry, amounts: tuple[float, ...]) -> tuple[bool, tuple[float, ...]]:
        """Reserve in Redis (leasing a slice along, when leasing); see BucketStore.take."""
        if self._failing_fast():
            raise StoreUnavailable("redis is unavailable")
        _, keys, shapes, gate = entry
        slots = gate.slots if gate is not None else None
        wants = self._book.wants(slots, amounts) if self._book is not None and slots is not None else None
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        if wants is None:
            op = _Op("r", keys, shapes, amounts, future)
        else:
            op = _Op("R", keys, shapes, amounts, future, wants, slots)
        self._queue.append(op)
        self._kick()
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled (client left, a drain) in the turn after Redis answered: the result is
            # set but never returned, so no lease will settle it. Give it back here (_run does
            # when the cancel came first: the future is cancelled then, not holding a result).
            if future.done() and not future.cancelled() and future.exception() is None and future.result()[0]:
                self._queue_charge(_give_back(op))
            raise

    def settle(self, entry: _Entry, reserved: tuple[float, ...], used: tuple[float, ...]) -> None:
        """Charge used minus reserved: to this process's lease when the plan leases (see
        LeaseBook.settle), else to Redis (queued, batched)."""
        plan, _, _, gate = entry
        if self._book is not None:
            if gate is not None:
                for bucket, excess in self._book.settle(gate, reserved, used):
                    self._queue_charge(_Op("c", (self.key(bucket.id),), [_shape(bucket)], (-excess,)))
                if self._return_timer is None:  # what the settle left here goes back within LEASE_TTL
                    self._return_timer = asyncio.get_running_loop().call_later(LEASE_TTL, self._return_leases)
                return
        self.charge(entry, limits.deltas(plan, reserved, used))

    def charge(self, entry: _Entry, deltas: tuple[float, ...]) -> None:
        """Queue signed amounts per bucket of the bound plan (negative refunds) for Redis."""
        if not any(deltas):
            return
        _, keys, shapes, _ = entry
        self._queue_charge(_Op("c", keys, shapes, deltas))

    def _queue_charge(self, op: _Op) -> None:
        self._queue.append(op)
        if self._down_since is not None and len(self._queue) > MAX_HELD:
            # An outage this long loses the oldest settle, not memory; never a reservation or a
            # top-up queued meanwhile (a request waits on it, a lease slot stays pending until answered).
            oldest = next((i for i, queued in enumerate(self._queue) if queued.future is None), None)
            if oldest is not None:
                del self._queue[oldest]
        if not self._drains and self._settle_timer is None:
            self._settle_timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._kick)

    async def levels(self, policy: LimitPolicy) -> dict[str, float]:
        """Levels now, refilled to Redis time; buckets with no key are full."""
        ids = list(policy.buckets)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.time()
                for bucket_id in ids:
                    pipe.hmget(self.key(bucket_id), "l", "t", "c")
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None
        seconds, micros = replies[0]
        now = self.now if self.now is not None else seconds + micros / 1e6
        out = {}
        for bucket_id, (level, stamp, was) in zip(ids, replies[1:]):
            b = policy.buckets[bucket_id]
            if level is None:
                out[bucket_id] = b.capacity
            elif not b.refill:  # a gauge: its slots in flight, under the capacity configured now
                out[bucket_id] = min(b.capacity, float(level) + (b.capacity - float(was or b.capacity)))
            else:
                elapsed = max(now - float(stamp), 0.0)
                out[bucket_id] = min(b.capacity, float(level) + elapsed * b.refill)
        return out

    async def aclose(self) -> None:
        """Give leases back, send queued settles, then close the connections. Requests this
        store admitted may settle later (a reload retired it): those settles are still sent, each
        drain then closing the connection it opened."""
        self._closed = True
        if self._return_timer is not None:
            self._return_timer.cancel()
            self._return_timer = None
        self._surrender()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        # The last drain sends what is queued and closes the connection holding the drain slot,
        # as a late settle's drain does: a drain run beside the slot let a settle start another,
        # whose call the close cut off (a false incident, its slot back a retry later). A drain
        # in flight may have passed its close check before `_closed`: it goes first.
        while self._drains:
            await asyncio.wait(list(self._drains))
        if self._settle_timer is not None:  # (set as that drain left: this one goes now)
            self._settle_timer.cancel()
        self._kick(closing=True)
        while self._drains:
            await asyncio.wait(list(self._drains))

    # -- leases ---------------------------------------------------------------------------

    def _top_up(self, slots: list[int]) -> None:
        """Queue one g op asking for full slices of `slots` (sent with the next batch)."""
        book = self._book
        assert book is not None
        wants = book.top_up(slots)
        buckets = [book.buckets[s] for s in slots]
        self._queue.append(_Op("g", tuple(self.key(b.id) for b in buckets), [_shape(b) for b in buckets], wants,
                               _TopUp(book, slots, wants), None, slots))
        self._kick()

    def _booked(self, op: _Op, grants: tuple[float, ...], levels: tuple[float, ...]) -> None:
        assert self._book is not None
        wants = op.wants if op.kind == "R" else op.amounts
        assert wants is not None and op.slots is not None  # a reservation or a top-up says what it asked for, and where
        for bucket, excess in self._book.granted(op.slots, wants, grants, levels, time.monotonic()):
            self._queue.append(_Op("c", (self.key(bucket.id),), [_shape(bucket)], (-excess,)))
        if self._return_timer is None and any(grants):
            self._return_timer = asyncio.get_running_loop().call_later(LEASE_TTL, self._return_leases)

    def _return_leases(self) -> None:
        """Every LEASE_TTL: give every holding back, so no lease outlives it."""
        self._return_timer = None
        self._surrender()

    def _surrender(self) -> None:
        if self._book is None:
            return
        for bucket, held in self._book.surrender():
            self._queue.append(_Op("c", (self.key(bucket.id),), [_shape(bucket)], (-held,)))
        if self._queue and not self._drains and self._settle_timer is None:
            try:
                self._settle_timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._kick)
            except RuntimeError:  # configure() before the loop runs: the first request drains them
                pass

    # -- batching -------------------------------------------------------------------------

    def _kick(self, closing: bool = False) -> None:
        """Start a drain if there is something to send and the slot is free; `closing` (aclose):
        even if there is nothing, and it closes the connection whatever it leaves queued."""
        self._settle_timer = None
        if (closing or self._queue or self._unsure is not None) and len(self._drains) < MAX_IN_FLIGHT:
            task = asyncio.get_running_loop().create_task(self._drain(closing))
            self._drains.add(task)  # held: the loop keeps only weak references to tasks

    async def _drain(self, closing: bool = False) -> None:
        """Send everything queued, batch after batch, until the queue is empty or Redis fails;
        first find out what became of a batch whose reply was lost. `closing`: aclose's drain."""
        try:
            while not self._failing_fast():
                async with self._sending:
                    if self._unsure is not None:
                        if not await self._resolve():
                            break
                        continue
                    if not self._queue:
                        break
                    batch, self._queue = self._queue[:MAX_OPS], self._queue[MAX_OPS:]
                    if not await self._run(batch):
                        break
        finally:
            try:
                if closing or (self._closed and not self._queue and self._unsure is None):
                    # aclose's drain closes the store's connection, and a retired store's late
                    # settles reopened one that nothing else would close. (Closed while this task
                    # still holds the drain slot: no other drain uses it meanwhile.)
                    await self._close_retired()
            finally:  # (even if cancelled meanwhile)
                self._leave_drain()

    def _leave_drain(self) -> None:
        # Leave the set now, not in a done-callback: an op queued between this task's last
        # check and such a callback would find the slot taken and wait forever.
        self._drains.discard(asyncio.current_task())
        if (self._queue or self._unsure is not None) and self._settle_timer is None:
            if self._down_since is not None:  # settles held during an incident, a batch to ask about: try again later
                self._settle_timer = asyncio.get_running_loop().call_later(RETRY_INTERVAL, self._kick)
            elif self._closed:  # queued while the connection was being closed
                self._settle_timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._kick)

    async def _close_retired(self) -> None:
        """Close the connection a retired store's late settles reopened. It may fail (redis-py's
        disconnect can time out): the drain must still give its slot back after, or every later
        settle waits for ever."""
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - a retired connection: nothing is left to do with it
            log.debug("closing a retired limiter store's connection failed", exc_info=True)

    async def _run(self, batch: list[_Op]) -> bool:
        """Send one batch and hand out its results. Returns False if Redis failed."""
        self._seq += 1
        keys, args = self._encode(batch, self._seq)
        try:
            reply = await self._evalsha(keys, args)
        except ResponseError as exc:  # Redis answered: the script did not run (no write made)
            self._incident(exc, batch, ran=False)
            return False
        except (RedisError, OSError) as exc:  # no answer: it may have run (a late reply) or not
            self._incident(exc, batch, ran=None)
            return False
        if reply == b"F":  # (not reached: numbers are sent in order, and asked about only once sent)
            self._incident(RedisError("batch refused as already asked about"), batch, ran=False)
            return False
        self._recovered()
        for op, taken, levels, grants in _results(batch, reply.split(), with_levels=True):
            if grants is not None:
                self._booked(op, grants, levels)
                # An admitted request's headers show Redis's level plus what this process holds,
                # as a decision from the lease does. A refusal is Redis's alone: its levels say
                # why and for how long (adding the lease could show room everywhere).
                if taken and op.kind == "R" and self._book is not None and op.slots is not None:
                    levels = tuple([a + b for a, b in zip(levels, self._book.table.levels(op.slots, 0.0))])
            assert op.future is not None
            if not op.future.done():
                op.future.set_result((op.kind == "g" or taken, levels))
            elif taken:  # the request was cancelled while waiting: give its quota back
                self._queue.append(_give_back(op))
        return True

    async def _resolve(self) -> bool:
        """Ask Redis whether the batch whose reply was lost ran (the script's '?' call). If it
        did, its settles landed: they are not sent again, and what its reservations and leases
        took goes back, since their requests were decided without it (on_store_error) and their
        settles will not return it. If it did not, it never will (the question fences it off),
        and its settles are sent first. Returns False if Redis still fails."""
        assert self._unsure is not None
        seq, batch = self._unsure
        now = "" if self.now is None else repr(self.now)
        try:
            reply = await self._evalsha([self._record], [now, str(GAUGE_TTL_MS), "", "?", str(seq)])
        except (RedisError, OSError) as exc:
            self._incident(exc, [], ran=False)
            return False
        self._unsure = None
        words = reply.split()
        if words[0] == b"U":  # (not reached, see BUCKETS_LUA) not sent again; what it took stays taken
            log.warning("rate-limit store: the outcome of a batch sent before the incident is unknown")
        elif words[0] == b"R":
            for op, taken, _, grants in _results(batch, words[1:], with_levels=False):
                back = op.amounts if taken and op.kind != "g" else (0.0,) * len(op.keys)
                if grants is not None:
                    back = tuple([a + g for a, g in zip(back, grants)])
                if any(back):
                    self._queue.append(_Op("c", op.keys, op.shapes, tuple(-a for a in back)))
        else:
            settles = [op for op in batch if op.future is None]
            self._queue[:0] = settles
            self._held += len(settles)
        self._recovered()
        return True

    def _encode(self, batch: list[_Op], seq: int) -> tuple[list[str], list[str]]:
        """KEYS and the five ARGV strings of one script call (see BUCKETS_LUA)."""
        index: dict[str, int] = {}
        shapes: list[str] = []
        ops: list[str] = []
        for op in batch:
            ops.append(op.kind)
            ops.append(str(len(op.keys)))
            for j, (key, shape, amount) in enumerate(zip(op.keys, op.shapes, op.amounts)):
                i = index.get(key)
                if i is None:
                    i = index[key] = len(index) + 1
                    shapes.append(shape)
                ops.append(str(i))
                ops.append(repr(amount))
                if op.wants is not None:
                    ops.append(repr(op.wants[j]))
        now = "" if self.now is None else repr(self.now)
        return [*index, self._record], [now, str(GAUGE_TTL_MS), " ".join(shapes), " ".join(ops), str(seq)]

    async def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA; on NOSCRIPT (Redis restarted or flushed) load the script and call again."""
        try:
            return await self.client.evalsha(BUCKETS_SHA, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(BUCKETS_LUA)
            return await self.client.evalsha(BUCKETS_SHA, len(keys), *keys, *args)

    # -- incidents ------------------------------------------------------------------------

    def _failing_fast(self) -> bool:
        return self._down_since is not None and time.monotonic() < self._retry_at

    def _incident(self, exc: BaseException, batch: list[_Op], ran: bool | None) -> None:
        """Fail the waiting reservations; keep the settles (bounded) to send when Redis is back,
        so quota and concurrency slots held in Redis are not lost to a short outage. A batch
        that may have run (`ran` None: its reply timed out, the connection broke) is kept
        apart until Redis says whether it did (_resolve): sent again, its settles could apply
        twice; taken for good, its reservations would never come back."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.error("rate-limit store: redis unavailable (%s: %s); deciding without it until it answers",
                      type(exc).__name__, exc)
        self._retry_at = now + RETRY_INTERVAL
        if ran is None:
            self._unsure = (self._seq, batch)
            settles = [op for op in self._queue if op.future is None][-MAX_HELD:]
        else:
            settles = [op for op in batch + self._queue if op.future is None][-MAX_HELD:]
        for op in batch + self._queue:
            if op.kind == "R" and self._book is not None and op.wants is not None and op.slots is not None:
                self._book.failed(op.slots, op.wants)
            if op.future is not None and not op.future.done():
                op.future.set_exception(StoreUnavailable(str(exc)))
        self._queue = settles
        self._held = len(settles)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("rate-limit store: redis answers again after %.1f s; sending %d settles held meanwhile",
                        time.monotonic() - self._down_since, self._held)
            self._down_since, self._held = None, 0


def _results(batch: list[_Op], words: list[bytes], with_levels: bool
             ) -> Iterator[tuple[_Op, bool, tuple[float, ...], tuple[float, ...] | None]]:
    """Per r, R and g op of `batch`, from the script's words: (op, taken, levels after, grants
    for R and g ops). Without levels: the words of a batch record ('1'|'0' and grants)."""
    pos = 0
    for op in batch:
        if op.future is None:
            continue
        n = len(op.keys)
        taken = op.kind != "g" and words[pos] == b"1"
        pos += op.kind != "g"
        levels: tuple[float, ...] = ()
        if with_levels:
            levels = tuple(map(float, words[pos:pos + n]))
            pos += n
        grants = None
        if op.kind in ("R", "g"):
            grants = tuple(map(float, words[pos:pos + n]))
            pos += n
        yield op, taken, levels, grants


def _give_back(op: _Op) -> _Op:
    """The charge that returns what a taken reservation took."""
    return _Op("c", op.keys, op.shapes, tuple([-a for a in op.amounts]))


def _shape(bucket: Bucket) -> str:
    """A bucket's capacity and refill as the script reads them."""
    return f"{bucket.capacity!r} {bucket.refill!r}"

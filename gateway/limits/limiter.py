"""The limiter: reserve quota before a request goes upstream, settle it after the response.

The policy (which buckets, how much, the 429) is `tollway.core.limits.policy`; this module runs it against a
*bucket store*: `MemoryBuckets` (one process) or `RedisBuckets` (shared by every worker and
replica). A store binds each plan once (`bind`), then on its buckets `decide`s from what this
process holds (the hot path; the Redis store may answer "ask me") or `take`s all amounts or
none in the store, and `settle`s what was used against what was reserved, without waiting.

When the store cannot answer (Redis down), `rate_limits.on_store_error` decides: `open`
admits the request unmetered, `closed` refuses it with a 503. Either way the decision is
counted in `tollway_rate_limit_store_errors_total`; the store logs once when an incident
starts and once when it ends, never per request.
"""
from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias

from tollway.core.accounting.pricing import FREE
from tollway.core.accounting.tokens import estimate_prompt_tokens
from tollway.core.config import Config, Key
from tollway.core.errors import GatewayError, rate_limits_unavailable
from tollway.core.kernels import ratelimit_headers
from tollway.core.limits import policy as limits
from tollway.core.limits import streams
from tollway.core.limits.policy import REQUEST_ONLY_APIS, REQUEST_ONLY_DEMAND, LimitPolicy, Plan
from tollway.core.request import RequestHead
from tollway.ext.usage import Usage
from tollway.gateway.telemetry.metrics import Metrics

# A store's own state for one plan (its bucket slots, its Redis keys), made by `bind` and
# handed back to it on every call: the limiter keeps it but never looks inside.
Bound: TypeAlias = Any


class StoreUnavailable(Exception):
    """The bucket store could not make a decision (connection refused, timeout, ...)."""


class BucketStore(Protocol):
    backend: str
    settings: tuple[str, ...]  # see store_settings()

    def configure(self, policy: LimitPolicy) -> None:
        """Adopt the buckets of a (new) config, keeping the levels of unchanged buckets."""

    def bind(self, plan: Plan) -> Bound:
        """This store's state for `plan` (its slots, its keys): built once per plan and kept
        by the limiter, which passes it to every call below, so none needs a lookup."""

    def decide(self, bound: Bound, demand: tuple[float, ...]) -> tuple[bool, tuple[float, ...]] | None:
        """The hot path: reserve `demand` (per measure, see tollway.core.limits.policy.reserve) on the
        bound plan from what this process holds, without waiting. Returns (taken, levels
        after), or None when only the store can decide (then the limiter awaits `take`).
        Never raises."""

    async def take(self, bound: Bound, amounts: tuple[float, ...]) -> tuple[bool, tuple[float, ...]]:
        """Take every amount (per bucket of the bound plan) or none, in the store. Returns
        (taken, levels after). Raises StoreUnavailable."""

    def settle(self, bound: Bound, reserved: tuple[float, ...], used: tuple[float, ...]) -> None:
        """Charge what was used minus what was reserved (both per measure) on the bound
        plan, without waiting; never raises."""

    async def levels(self, policy: LimitPolicy) -> dict[str, float]:
        """Current level of every bucket of `policy`, by bucket id. Raises StoreUnavailable."""

    async def aclose(self) -> None:
        """Flush what is queued and release connections."""


class Lease:
    """A granted reservation: what to settle later and the headers to send now."""

    __slots__ = ("plan", "bound", "demand", "model", "headers", "metered", "extra")

    def __init__(self, plan: Plan, bound: Bound, demand: tuple[float, ...], model: str,
                 headers: list[tuple[str, str]], metered: bool = True) -> None:
        self.plan = plan
        self.bound = bound  # the store's state for the plan (BucketStore.bind)
        self.demand = demand  # what was reserved, per measure (tollway.core.limits.policy.reserve)
        self.model = model
        self.headers = headers
        self.metered = metered  # False when admitted without the store (on_store_error: open)
        # taken since, per measure, by a stream going past it (extend): each growing bucket took
        # exactly this (an extension is taken whole, never capped at capacity), so the settle
        # may count it as reserved
        self.extra: tuple[float, ...] | None = None


class Growing:
    """The buckets of a plan that a stream's output grows (tollway.core.limits.streams), bound
    to the store, with the output rate their cost buckets are charged at."""

    __slots__ = ("plan", "bound", "rate", "step")

    def __init__(self, plan: Plan, bound: Bound, rate: float) -> None:
        self.plan, self.bound, self.rate = plan, bound, rate
        self.step = streams.step(plan, rate)

    def at_rate(self, rate: float) -> Growing:
        """The same buckets charged at another output rate (a stream priced as it is served)."""
        return Growing(self.plan, self.bound, rate)


class AskStore:
    """What `Limiter.admit` returns when only the store can decide: the decision so far, to
    finish with `await Limiter.ask_store(...)`."""

    __slots__ = ("plan", "bound", "demand", "model")

    def __init__(self, plan: Plan, bound: Bound, demand: tuple[float, ...], model: str) -> None:
        self.plan, self.bound, self.demand, self.model = plan, bound, demand, model


class Limiter:
    """Runs one config's limit policy against a bucket store."""

    def __init__(self, config: Config, store: BucketStore, metrics: Metrics, previous: LimitPolicy | None = None) -> None:
        # dataset prices as of the day the config was loaded: a reload or restart picks up a price change
        self.policy = LimitPolicy(config, datetime.now(UTC).date(), previous)
        self.enabled = self.policy.enabled  # (an attribute: read on every request)
        self.store = store
        self.fail_open = config.rate_limits.on_store_error == "open"
        self.metrics = metrics
        store.configure(self.policy)
        # (key name, model) -> (plan, what the store bound to it; None when no limit applies)
        self._plans: dict[tuple[str, str], tuple[Plan, Bound | None]] = {}
        # id(plan) -> (the plan, held so the id stays its own; its growing buckets, or None)
        self._growing: dict[int, tuple[Plan, Growing | None]] = {}

    def admit(self, key: Key, model: str, api: str, head: RequestHead, body: bytes) -> Lease | AskStore | None:
        """The hot path: decide without waiting, from what this process holds (the memory
        store always can; the Redis store when its leases cover the request).

        Returns the Lease, None when no limit applies, or an AskStore when only the store can
        decide: then `await ask_store(it)`. Raises GatewayError 429 when a bucket has no room.
        """
        plan, bound = self._plan(key, model)
        if bound is None:
            return None
        demand = self._demand(plan, model, api, head, body)
        decided = self.store.decide(bound, demand)
        if decided is None:
            return AskStore(plan, bound, demand, model)
        return self._grant(plan, bound, demand, model, decided)

    async def ask_store(self, pending: AskStore) -> Lease:
        """Finish a decision `admit` could not make here: the store reserves (Redis, batched).
        Raises GatewayError: 429 when a bucket has no room, 503 when the store is down and
        `on_store_error: closed`."""
        plan, demand = pending.plan, pending.demand
        try:
            decided = await self.store.take(pending.bound, limits.amounts(plan, demand))
        except StoreUnavailable:
            return self._without_store(plan, pending.bound, demand, pending.model)
        return self._grant(plan, pending.bound, demand, pending.model, decided)

    async def reserve_requests(self, key: Key, model: str) -> Lease | None:
        """A reservation on the request buckets alone (the token and cost ones get nothing): a
        request a cache hit may answer. Raises a 429 as `reserve` does."""
        plan, bound = self._plan(key, model)
        if bound is None:
            return None
        decided = self.store.decide(bound, REQUEST_ONLY_DEMAND)
        if decided is None:
            return await self.ask_store(AskStore(plan, bound, REQUEST_ONLY_DEMAND, model))
        return self._grant(plan, bound, REQUEST_ONLY_DEMAND, model, decided)

    async def reserve(self, key: Key, model: str, api: str, head: RequestHead, body: bytes) -> Lease | None:
        """`admit`, then `ask_store` when needed: this request's Lease, or None when no limit
        applies. Raises GatewayError as those two do."""
        decision = self.admit(key, model, api, head, body)
        return await self.ask_store(decision) if isinstance(decision, AskStore) else decision

    def _plan(self, key: Key, model: str) -> tuple[Plan, Bound | None]:
        found = self._plans.get((key.name, model))
        if found is None:
            plan = self.policy.plan(key, model)
            found = self._plans[(key.name, model)] = (plan, self.store.bind(plan) if plan else None)
        return found

    def _demand(self, plan: Plan, model: str, api: str, head: RequestHead, body: bytes) -> tuple[float, ...]:
        if api in REQUEST_ONLY_APIS:  # count_tokens: a request, but no tokens or cost (see tollway.core.limits.policy)
            return REQUEST_ONLY_DEMAND
        policy = self.policy
        return limits.reserve(plan, estimate_prompt_tokens(body), policy.output_bound(api, head),
                              policy.price(model) if plan.priced else FREE)

    def _grant(self, plan: Plan, bound: Bound, demand: tuple[float, ...], model: str,
               decided: tuple[bool, tuple[float, ...]]) -> Lease:
        taken, levels = decided
        if not taken:
            refusal = _denial(plan, limits.amounts(plan, demand), levels)
            self.metrics.limit_decision(refusal.bucket.id, "limited")
            raise limits.rejection(refusal, model)
        counts = self.metrics.limit_counts
        for allowed in plan.allowed:
            counts[allowed] += 1
        return Lease(plan, bound, demand, model, ratelimit_headers(plan.header_specs, levels))

    def settle(self, lease: Lease, usage: Usage | None, upstream_model: str | None) -> None:
        """Settle `lease` with what was really used (None: nothing). Never waits: the memory
        store applies it at once (a few arithmetic operations), the Redis store queues it."""
        if lease.metered:
            plan = lease.plan
            price = self.policy.price(lease.model, upstream_model) if plan.priced else None
            used = limits.used(plan, usage, price)
            if lease.extra is not None:  # taken already by extensions: charged as reserved, not again
                used = tuple([u - e for u, e in zip(used, lease.extra)])
            self.store.settle(lease.bound, lease.demand, used)

    # -- a stream going past its reservation (tollway.core.limits.streams) ---------------

    def growing(self, lease: Lease) -> Growing | None:
        """The lease's buckets that a stream's output draws on, or None if it has none (or
        was admitted without the store: then nothing meters it)."""
        if not lease.metered:
            return None
        plan = lease.plan
        found = self._growing.get(id(plan))
        if found is None or found[0] is not plan:
            sub = streams.growing(plan)
            rate = streams.output_rate(self.policy.price(lease.model)) if sub is not None and sub.priced else 0.0
            found = self._growing[id(plan)] = (plan, Growing(sub, self.store.bind(sub), rate) if sub else None)
        return found[1]

    async def extend(self, lease: Lease, grow: Growing, tokens: float, need: float, usd: float = 0.0) -> float:
        """Take `tokens` more output tokens for the lease's stream on its growing buckets (the
        store's own way: the memory table, the Redis lease, or one Redis call), or if they do
        not fit, `need` of them where that costs no call; `usd` more of cost with either. Returns
        the tokens taken (part of the reservation from now on); raises the GatewayError to stop
        the stream with.

        Taken whole or not at all: a store's `decide` caps a demand at each bucket's capacity (an
        admission is let in from a full bucket), but the stream would send all it asked for, so a
        demand larger than a bucket goes to `take` uncapped, which refuses it with the levels
        the stop names (docs/limits.md: the chunk that does not fit is not sent)."""
        store, plan = self.store, grow.plan
        demand = streams.extension(tokens, grow.rate, usd)
        if need < tokens and not streams.fits_capacity(plan, demand):  # a step more than a bucket: just the need
            tokens, demand = need, streams.extension(need, grow.rate, usd)
        decided = store.decide(grow.bound, demand) if streams.fits_capacity(plan, demand) else None
        if decided is None:
            try:
                decided = await store.take(grow.bound, streams.whole(plan, demand))
            except StoreUnavailable:
                self.metrics.limit_store_errors.labels(store.backend, "open" if self.fail_open else "closed").inc()
                if not self.fail_open:
                    raise rate_limits_unavailable(limits.retry_headers(1.0)) from None
                return tokens  # unmetered, as a request admitted while the store is down
        if not decided[0] and need < tokens:
            smaller = streams.extension(need, grow.rate, usd)
            again = store.decide(grow.bound, smaller) if streams.fits_capacity(plan, smaller) else None
            if again is not None:
                tokens, demand, decided = need, smaller, again
        if not decided[0]:
            raise self._stopped(plan, streams.whole(plan, demand), decided[1], lease.model)
        _took(lease, demand)
        return tokens

    def extend_ahead(self, lease: Lease, grow: Growing, tokens: float, usd: float = 0.0) -> bool:
        """Take `tokens` more output tokens (and `usd` more of cost) for the lease's stream if
        they fit where that costs no store call (the memory table, the Redis store's local
        lease); else take nothing and return False. Never a stop: the stream asks ahead of what
        it may send (a bound of its bytes), and one refused here counts exactly and asks with
        `extend`. One larger than a bucket is refused here, not capped (see `extend`)."""
        demand = streams.extension(tokens, grow.rate, usd)
        if not streams.fits_capacity(grow.plan, demand):
            return False
        decided = self.store.decide(grow.bound, demand)
        if decided is None or not decided[0]:
            return False
        _took(lease, demand)
        return True

    def _stopped(self, plan: Plan, amounts: tuple[float, ...], levels: tuple[float, ...], model: str) -> GatewayError:
        refusal = _denial(plan, amounts, levels)
        self.metrics.limit_decision(refusal.bucket.id, "stopped")
        err = limits.rejection(refusal, model)
        err.message = f"The stream was stopped: {err.message}"
        return err

    def _without_store(self, plan: Plan, bound: Bound, demand: tuple[float, ...], model: str) -> Lease:
        self.metrics.limit_store_errors.labels(self.store.backend, "open" if self.fail_open else "closed").inc()
        if not self.fail_open:
            raise rate_limits_unavailable(limits.retry_headers(1.0))
        return Lease(plan, bound, demand, model, [], metered=False)

    async def usage_report(self) -> list[dict[str, Any]]:
        """Every bucket with its limit, current use and what remains. Raises StoreUnavailable."""
        levels = await self.store.levels(self.policy)
        report = []
        for bucket_id, bucket in self.policy.buckets.items():
            level = levels.get(bucket_id, bucket.capacity)
            report.append({
                "id": bucket_id, "scope": bucket.scope, "owner": bucket.owner, "model": bucket.model,
                "measure": bucket.measure,
                "per_seconds": bucket.window or None, "limit": bucket.capacity,
                "used": round(bucket.capacity - level, 6), "remaining": round(max(level, 0.0), 6),
                "reset_seconds": _finite(bucket.until_full(level)),
            })
        return report


def _finite(seconds: float) -> float | None:
    return None if seconds == float("inf") else round(seconds, 3)


def build_limiter(config: Config, metrics: Metrics, previous: Limiter | None = None) -> Limiter:
    """The limiter for `config`, reusing the previous store when the backend did not change
    (so a reload keeps every unchanged bucket's level and the Redis connections)."""
    settings = store_settings(config)
    store: BucketStore | None = previous.store if previous is not None else None
    if store is None or store.settings != settings:
        store = _new_store(config, metrics)
    return Limiter(config, store, metrics, previous.policy if previous is not None else None)


WORKERS_ENV = "TOLLWAY_WORKERS"  # set by `tollway serve` for its worker processes


def per_worker_problem(config: Config, workers: int) -> str | None:
    """Why `config` cannot be enforced by `workers` processes, or None if it can.

    The memory backend keeps each worker's buckets in that worker, and granian spreads
    connections over workers, so N workers would admit up to N times every limit.
    """
    if not unshared(config, workers):
        return None
    budgets = any(k.budget is not None for k in config.keys) or any(t.budget is not None for t in config.teams)
    if not budgets and not LimitPolicy(config).enabled:
        return None
    what = "limits and budgets" if budgets else "limits"
    return (f"rate_limits.backend 'memory' keeps {what} inside one process, and --workers {workers} would run "
            f"{workers} of them: together they would admit up to {workers}x every limit and budget. "
            f"Use rate_limits.backend: redis to share {what}, or serve with --workers 1.")


def worker_count() -> int:
    """How many workers `tollway serve` runs (1 outside it: one process holds every bucket)."""
    return int(os.environ.get(WORKERS_ENV, "1"))


def unshared(config: Config, workers: int) -> bool:
    """Whether `workers` processes would each hold their own buckets and budgets for `config`."""
    return workers > 1 and config.rate_limits.backend == "memory"


def run_time_problem(config: Config, workers: int, what: str) -> str | None:
    """Why a run-time key's or team's `what` (its budget or limits) cannot be enforced by
    `workers` processes, or None. The file's keys and teams are checked by `per_worker_problem`
    before the workers start; run-time ones arrive later (the admin API, `tollway keys`,
    another replica), so the admin API refuses them with this and the runtime refuses their keys."""
    if not unshared(config, workers):
        return None
    return (f"rate_limits.backend 'memory' keeps limits and budgets inside one process, and this gateway runs "
            f"--workers {workers}: each worker would enforce {what} on its own, together admitting up to "
            f"{workers}x as much. Use rate_limits.backend: redis to share it, or serve with --workers 1.")


def store_settings(config: Config) -> tuple[str, ...]:
    """What identifies a store: a change here needs a new one."""
    rl = config.rate_limits
    return (rl.backend, rl.redis_url, rl.key_prefix) if rl.backend == "redis" else (rl.backend,)


def _new_store(config: Config, metrics: Metrics) -> BucketStore:
    rl = config.rate_limits
    if rl.backend == "redis":
        from tollway.gateway.limits.redis_store import RedisBuckets

        return RedisBuckets(rl.redis_url, rl.key_prefix, metrics, leasing=True)
    from tollway.gateway.limits.memory import MemoryBuckets

    return MemoryBuckets()


def _denial(plan: Plan, amounts: tuple[float, ...], levels: tuple[float, ...]) -> limits.Denial:
    """The bucket that refused `amounts`. A store's levels may show room everywhere although it
    refused (levels read apart from the decision, a race with a refill): then the bucket with the
    least room, with no wait to quote. A refusal is a 429 whatever the levels say, never a 500."""
    try:
        return limits.denial(plan, amounts, levels)
    except ValueError:
        i = min(range(len(amounts)), key=lambda j: levels[j] - amounts[j])
        return limits.Denial(plan.buckets[i], 0.0, amounts[i], levels[i])


def _took(lease: Lease, demand: tuple[float, ...]) -> None:
    """An extension taken, whole (within every bucket's capacity: what each bucket really took):
    part of the lease's reservation, given back or charged at the settle."""
    extra = lease.extra
    lease.extra = demand if extra is None else tuple([a + b for a, b in zip(extra, demand)])

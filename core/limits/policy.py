"""Rate-limit and budget policy: which buckets a request draws on, what it reserves, how it settles.

Theory of operation
-------------------
Every configured limit is one token bucket (`Bucket`): `capacity` is the limit and it refills
continuously at `capacity / window` per second, so there are no windows that reset on the
clock (see ext/buckets.py). In any interval of length T a bucket admits at most
``capacity * (1 + T / window)``: a burst across a "window boundary" gets one capacity, never two.
A `concurrent` limit is a gauge: taken when the request starts, given back when it ends.

A request draws on the buckets of its key, its key's team and its model, plus the key-by-model
and team-by-model buckets of limits that name `model:`; the `Plan` of a (key, model) pair lists
them. Before forwarding, the limiter *reserves* on all of them at once, all or nothing:

    requests       1                      input_tokens   prompt bound
    output_tokens  output bound           total_tokens   prompt bound + output bound
    cost_usd       upper_cost(bounds)     concurrent     1

The prompt bound is the body's length in bytes (`tollway.core.accounting.tokens.estimate_prompt_tokens` says why
that bounds a text prompt; it is about 4x loose for English). The output bound is the client's
`max_tokens` (x `n`), else `rate_limits.default_max_tokens` (none for a negative `max_tokens`,
relayed for the provider to refuse). A reservation is capped at its
bucket's capacity, so a request bigger than a whole limit is admitted from a full bucket
instead of never. When the response ends the limiter *settles*: each bucket is charged the
difference between real usage and the reservation (a refund when less was used; debt, repaid
by refill, when more was).

Overshoot bound: a bucket is only ever charged past its level by settles, so over any interval
of length T usage stays within ``capacity * (1 + T / window) + sum of (real - reserved)`` over
the requests settled in it. That excess is zero for a request whose reservation bounds its
usage (text prompt, explicit max_tokens, no cap at capacity); otherwise it is that request's
usage beyond its bound (images referenced by URL, output past the default max_tokens).

This module is sans-IO: it takes `now` where time matters and never touches a store.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING
from urllib.parse import quote

from tollway.core.accounting.pricebook import PriceBook
from tollway.core.accounting.pricing import FREE, Price, cost, upper_cost
from tollway.core.errors import GatewayError, budget_exceeded, rate_limited
from tollway.ext.ratelimit import HeaderSpec, go_duration
from tollway.ext.usage import Usage

if TYPE_CHECKING:  # tollway.core.config (check_limits.py) imports this module to validate limits
    from tollway.core.config import Config, Key, Limit
    from tollway.core.request import RequestHead

MEASURES = ("requests", "input_tokens", "output_tokens", "total_tokens", "cost_usd", "concurrent")
TOKEN_MEASURES = ("total_tokens", "input_tokens", "output_tokens")  # header preference order
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_WINDOW_SECONDS = 366 * 86400.0  # a rate window of a year at most (the Redis store's state expires after it)
_PER = re.compile(r"^(\d+(?:\.\d+)?)?([smhd])$")
_NO_OUTPUT_APIS = frozenset(("embeddings", "count_tokens", "moderations", "rerank"))  # they generate no tokens
# APIs that feed no model and generate nothing: each counts as one request (and holds a
# concurrency slot while it runs) but reserves and is charged no tokens and no cost, or a
# count of a large prompt would block the key's token limits while it is being counted.
REQUEST_ONLY_APIS = frozenset(("count_tokens",))
REQUEST_ONLY_DEMAND = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # reserve()'s demand with no tokens (MEASURES order)


def window_seconds(per: str) -> float:
    """Seconds in a `per` value such as `1m`, `30s`, `2h`, `1d` (or `m`). Raises ValueError."""
    m = _PER.match(per.strip())
    if not m:
        raise ValueError(f"per must be a number and a unit s, m, h or d (like 1m or 30s), not {per!r}")
    seconds = float(m.group(1) or 1) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise ValueError("per must be longer than 0 seconds")
    if seconds > MAX_WINDOW_SECONDS:  # a bucket that (almost) never refills is `concurrent`'s, or a budget's, job
        raise ValueError(f"per is at most 366d (a longer spend limit is a calendar budget), not {per.strip()[:20]}")
    return seconds


def measure_of(limit: Limit) -> tuple[str, float]:
    """The one measure a limit counts and its amount. Raises ValueError if it names 0 or 2+."""
    named = [(m, getattr(limit, m)) for m in MEASURES if getattr(limit, m) is not None]
    if len(named) != 1:
        found = ", ".join(m for m, _ in named) or "none"
        raise ValueError(f"a limit counts exactly one of {', '.join(MEASURES)} (found: {found})")
    measure, amount = named[0]
    value = float(amount)
    if not math.isfinite(value):
        raise ValueError(f"{measure} must be a finite number")
    return measure, value


@dataclass(frozen=True, slots=True)
class Bucket:
    """One configured limit applied to one owner (a key, a team, a model or a pair)."""

    id: str           # stable while the limit is unchanged: the store's name for this bucket
    scope: str        # key | team | model | key_model | team_model
    owner: str        # the key, team or model name
    measure: str
    capacity: float
    window: float     # seconds; 0 for a concurrent gauge
    model: str | None = None  # the model of a key_model or team_model pair

    @property
    def refill(self) -> float:
        """Refill per second (0 for a gauge, which never refills)."""
        return self.capacity / self.window if self.window else 0.0

    @property
    def is_budget(self) -> bool:
        return self.measure == "cost_usd"

    def wait(self, level: float, amount: float) -> float:
        """Seconds until `amount` fits at `level` (0 if it does, inf if it never will)."""
        if level >= amount:
            return 0.0
        if self.refill <= 0.0 or amount > self.capacity:
            return math.inf
        return (amount - level) / self.refill

    def until_full(self, level: float) -> float:
        """Seconds until the bucket is full again from `level` (inf for a short gauge)."""
        missing = self.capacity - level
        if missing <= 0.0:
            return 0.0
        return missing / self.refill if self.refill > 0.0 else math.inf


def bucket_for(scope: str, owner: str, limit: Limit, model: str | None = None) -> Bucket:
    """The bucket of `limit` on `owner` (on the pair owner x `model` when given).
    Raises ValueError for a malformed limit."""
    measure, amount = measure_of(limit)
    window = 0.0 if measure == "concurrent" else window_seconds(limit.per or "")
    per = "inflight" if measure == "concurrent" else f"{window:g}s"
    name = quote(owner, safe=_SAFE) + (f"/{quote(model, safe=_SAFE)}" if model is not None else "")
    return Bucket(f"{scope}:{name}:{measure}:{per}", scope, owner, measure, amount, window, model)


_SAFE = "-._~@"  # everything else in a name is %-escaped, so ids never collide


@dataclass(frozen=True, slots=True)
class Plan:
    """The buckets one (key, model) pair draws on, and which ones the response headers show."""

    buckets: tuple[Bucket, ...]
    header_requests: int  # index into buckets, -1 if no request limit applies
    header_tokens: int    # index into buckets, -1 if no token limit applies
    # Derived once here, because reserve/settle/headers run on every request:
    measures: tuple[int, ...] = field(init=False)     # index into MEASURES, per bucket
    capacities: tuple[float, ...] = field(init=False)
    priced: bool = field(init=False)                   # has a cost_usd bucket
    grows: bool = field(init=False)                    # a stream's output draws on it (output, total tokens, cost)
    header_specs: tuple[HeaderSpec, ...] = field(init=False)  # see tollway.ext.ratelimit
    allowed: tuple[tuple[str, str], ...] = field(init=False)  # (bucket id, "allowed"): decision counter keys

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: set the derived fields once, here
        put(self, "measures", tuple(MEASURES.index(b.measure) for b in self.buckets))
        put(self, "capacities", tuple(b.capacity for b in self.buckets))
        put(self, "priced", any(b.is_budget for b in self.buckets))
        put(self, "grows", any(b.measure in ("output_tokens", "total_tokens", "cost_usd") for b in self.buckets))
        specs = []
        for kind, i in (("requests", self.header_requests), ("tokens", self.header_tokens)):
            if i >= 0:
                b = self.buckets[i]
                specs.append((i, (f"x-ratelimit-limit-{kind}", f"{b.capacity:.0f}"), f"x-ratelimit-remaining-{kind}",
                              f"x-ratelimit-reset-{kind}", b.capacity, b.refill))
        put(self, "header_specs", tuple(specs))
        put(self, "allowed", tuple((b.id, "allowed") for b in self.buckets))

    def __bool__(self) -> bool:
        return bool(self.buckets)


NO_LIMITS = Plan((), -1, -1)


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a reservation did not fit: the bucket that needs the longest wait."""

    bucket: Bucket
    wait: float        # seconds; inf if it can never fit
    requested: float
    level: float


class LimitPolicy:
    """The limits of one config, indexed for the hot path. Immutable apart from its price cache."""

    def __init__(self, config: Config, today: date | None = None, previous: LimitPolicy | None = None) -> None:
        """`today` dates the dataset prices (see `known_price`); None: the newest it lists.
        `previous`: the policy this one replaces; an owner (key or team object) it already
        held keeps its buckets as they were made, so a rebuild with 100,000 keys costs dict
        reads, not 100,000 bucket constructions (run-time keys rebuild on every change)."""
        self.default_max_tokens = config.rate_limits.default_max_tokens
        self._teams = {t.name: t.limits for t in config.teams}
        self._models = {m.name: m for m in config.models}
        self.prices = PriceBook(config, today)
        # id(owner) -> (owner, its buckets): the owner is held, so its id cannot be reused meanwhile
        self._made: dict[int, tuple[object, list[Bucket]]] = {}
        self.buckets: dict[str, Bucket] = {b.id: b for b in self._all_buckets(config, previous._made if previous else {})}

    @property
    def enabled(self) -> bool:
        return bool(self.buckets)

    def plan(self, key: Key, model: str) -> Plan:
        """The plan for requests by `key` to the public model `model` (a route name). Built
        on each call: the limiter keeps it, with its store's binding, per (key, model)."""
        found: list[Bucket] = []
        found += _owned("key", key.name, key.limits, model)
        if key.team is not None:
            found += _owned("team", key.team, self._teams.get(key.team, []), model)
        entry = self._models.get(model)
        if entry is not None:
            found += [bucket_for("model", model, lim) for lim in entry.limits]
        buckets = tuple(found)
        return Plan(buckets, _header_index(buckets, ("requests",)), _header_index(buckets, TOKEN_MEASURES))

    def price(self, model: str, upstream_model: str | None = None) -> Price:
        """The price the limiter charges a response at: `known_price`, or FREE for a model
        with no price (`tollway check` warns about those; their cost is recorded as unknown)."""
        return self.known_price(model, upstream_model) or FREE

    def known_price(self, model: str, upstream_model: str | None = None) -> Price | None:
        """The price of a response of the public model `model` served as `upstream_model`, or
        None: unpriced, not free (tollway.core.accounting.pricebook)."""
        return self.prices.price(model, upstream_model)

    def output_bound(self, api: str, head: RequestHead) -> int:
        """The most output tokens the request may produce, as far as the client said."""
        if api in _NO_OUTPUT_APIS:
            return 0
        per_choice = head.max_completion_tokens or head.max_tokens or head.max_output_tokens or self.default_max_tokens
        if per_choice < 0:  # relayed for the upstream to refuse: the limiter reserves no output for it
            return 0
        n = head.n
        return per_choice * n if n is not None and n > 1 else per_choice  # (head.output_limit, inlined: hot)

    def _all_buckets(self, config: Config, made: dict[int, tuple[object, list[Bucket]]]) -> Iterator[Bucket]:
        for key in config.keys:
            yield from self._owner_buckets("key", key, key.name, key.limits, made)
        for team in config.teams:
            yield from self._owner_buckets("team", team, team.name, team.limits, made)
        for entry in config.models:
            yield from (bucket_for("model", entry.name, lim) for lim in entry.limits)

    def _owner_buckets(self, scope: str, owner: object, name: str, limits: list[Limit],
                       made: dict[int, tuple[object, list[Bucket]]]) -> list[Bucket]:
        """Every bucket of one key or team: its own limits, then one per model it names."""
        if not limits:
            return []
        held = made.get(id(owner))
        if held is None or held[0] is not owner:
            found: list[Bucket] = []
            for model in [None, *sorted({lim.model for lim in limits if lim.model})]:
                found += _owned(scope, name, limits, model, only_model=model is not None)
            held = (owner, found)
        self._made[id(owner)] = held  # the same tuple when kept: a rebuild makes no garbage for it
        return held[1]


def _owned(scope: str, owner: str, limits: list[Limit], model: str | None, only_model: bool = False) -> list[Bucket]:
    """Buckets of an owner's limits that apply to `model`: unqualified ones (unless
    `only_model`) and those naming that model, which are counted per (owner, model)."""
    out = []
    for lim in limits:
        if lim.model is None and not only_model:
            out.append(bucket_for(scope, owner, lim))
        elif lim.model is not None and lim.model == model:
            out.append(bucket_for(f"{scope}_model", owner, lim, model))
    return out


_SCOPE_RANK = {"key_model": 0, "key": 1, "team_model": 2, "team": 3, "model": 4}


def _header_index(buckets: tuple[Bucket, ...], measures: tuple[str, ...]) -> int:
    """The bucket the x-ratelimit headers describe: the preferred measure (OpenAI's token
    headers are about total tokens), then the narrowest scope, then the shortest window."""
    best, best_rank = -1, None
    for i, b in enumerate(buckets):
        if b.measure in measures:
            rank = (measures.index(b.measure), _SCOPE_RANK[b.scope], b.window)
            if best_rank is None or rank < best_rank:
                best, best_rank = i, rank
    return best


# -- reservation and settlement ---------------------------------------------------------

def reserve(plan: Plan, prompt_tokens: float, output_tokens: float, price: Price) -> tuple[float, ...]:
    """What a request of these bounds reserves on `plan`: its *demand*, per measure (MEASURES
    order), before the capacity cap. Bucket i takes ``min(demand[plan.measures[i]],
    plan.capacities[i])`` (`amounts`); the bucket kernel applies the cap itself, so the hot
    path never builds the per-bucket list."""
    dollars = upper_cost(prompt_tokens, output_tokens, price) if plan.priced else 0.0
    return (1.0, prompt_tokens, output_tokens, prompt_tokens + output_tokens, dollars, 1.0)


def amounts(plan: Plan, demand: tuple[float, ...]) -> tuple[float, ...]:
    """What each bucket of `plan` takes of `demand`: the demand of its measure, capped at capacity
    (compared as the bucket kernel does, so a NaN takes the capacity there and here alike)."""
    return tuple([_capped(demand[m], cap) for m, cap in zip(plan.measures, plan.capacities)])


def used(plan: Plan, usage: Usage | None, price: Price | None) -> tuple[float, ...]:
    """What a request really used, per measure (MEASURES order); `price` is read only when
    `plan` has a budget. `usage` None means nothing was used (the upstream failed before
    answering). A request still counts as one request; a concurrent slot is given back."""
    u = usage or _NOTHING
    dollars = (cost(u, price) or 0.0) if plan.priced and price is not None else 0.0  # (None: unpriceable, $0)
    # The counts are the upstream's word, held to 0..MAX_COUNT when the Usage was made: a negative
    # count cannot refund more than was reserved, nor an absurd one charge past it.
    prompt, completion = float(u.prompt_tokens), float(u.completion_tokens)
    return (1.0, prompt, completion, float(u.total_tokens) or prompt + completion, dollars, 0.0)


def settle(plan: Plan, demand: tuple[float, ...], usage: Usage | None, price: Price) -> tuple[float, ...]:
    """Per bucket, what to charge now: real usage minus what was taken (negative = refund).
    The same arithmetic as `BucketTable.settle`, for stores that do it elsewhere (Redis)."""
    return deltas(plan, demand, used(plan, usage, price))


def deltas(plan: Plan, reserved: tuple[float, ...], real: tuple[float, ...]) -> tuple[float, ...]:
    """Per bucket of `plan`: ``real[m] - min(reserved[m], capacity)`` (m its measure). The
    request measure nets to 0 (one reserved, one used) unless the capacity is below one."""
    return tuple([real[m] - _capped(reserved[m], cap) for m, cap in zip(plan.measures, plan.capacities)])


def _capped(amount: float, capacity: float) -> float:
    """`min(amount, capacity)` in the bucket kernel's order (tollway.ext.buckets): NaN gives the
    capacity, where `min` would keep NaN and a store would hold a level that refuses nothing."""
    return amount if amount < capacity else capacity


_NOTHING = Usage()


def denial(plan: Plan, amounts: tuple[float, ...], levels: tuple[float, ...]) -> Denial:
    """The bucket that kept a reservation out: the one needing the longest wait."""
    worst: Denial | None = None
    for bucket, amount, level in zip(plan.buckets, amounts, levels):
        wait = bucket.wait(level, amount)
        if wait > 0.0 and (worst is None or wait > worst.wait):
            worst = Denial(bucket, wait, amount, level)
    if worst is None:
        raise ValueError("every bucket has room; nothing was denied")
    return worst


# -- what the client sees ------------------------------------------------------------------

_MEASURE_NAMES = {
    "requests": "requests", "input_tokens": "input tokens", "output_tokens": "output tokens",
    "total_tokens": "tokens", "cost_usd": "USD", "concurrent": "concurrent requests",
}
LONG_WAIT = 60.0  # the openai SDK ignores retry-after beyond this; tell it not to retry instead
CONCURRENT_RETRY = 1.0  # a gauge frees when some request ends; there is no refill time to quote


def rejection(d: Denial, model: str) -> GatewayError:
    """The 429 for a denial: OpenAI's `insufficient_quota` for an exhausted budget, else
    `rate_limit_exceeded`, with retry-after headers from the bucket's real refill time."""
    b = d.bucket
    wait = CONCURRENT_RETRY if b.measure == "concurrent" else d.wait
    per = "in flight" if b.measure == "concurrent" else f"per {go_duration(b.window)}"
    scope = b.scope.replace("_", " x ")
    owner = f"{b.owner}' x '{b.model}" if b.model else b.owner
    # (an infinite wait: more than the whole bucket, which only a stream's extension asks for)
    retry = "That is more than the whole limit." if math.isinf(wait) else f"Please try again in {go_duration(wait)}."
    if b.is_budget:
        return budget_exceeded(f"You exceeded your budget of {b.capacity:g} USD {per} for {scope} '{owner}'. {retry}",
                               retry_headers(wait))
    message = (f"Rate limit reached for {model} on {_MEASURE_NAMES[b.measure]} {per} for {scope} '{owner}': "
               f"Limit {b.capacity:g}, Used {max(b.capacity - d.level, 0):.0f}, Requested {d.requested:g}. {retry}")
    return rate_limited(message, "tokens" if "tokens" in b.measure else "requests", retry_headers(wait))


def retry_headers(wait: float) -> list[tuple[str, str]]:
    """retry-after (whole seconds, rounded up) and retry-after-ms; for a wait the SDK would not
    honour (over a minute, or never), `x-should-retry: false` so it fails fast instead."""
    if math.isinf(wait):
        return [("x-should-retry", "false")]
    headers = [("retry-after", str(max(1, math.ceil(wait)))), ("retry-after-ms", str(max(1, math.ceil(wait * 1000))))]
    if wait > LONG_WAIT:
        headers.append(("x-should-retry", "false"))
    return headers

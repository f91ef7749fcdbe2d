"""How far a stream's output may go on its limits, and what it takes to go further.

Theory of operation
-------------------
A request reserves its output bound at admission (tollway.core.limits.policy: max_tokens, else
rate_limits.default_max_tokens, capped at each bucket's capacity). Only three measures grow as a
stream's output does: `output_tokens`, `total_tokens` and `cost_usd`; their buckets are the
plan's *growing* buckets. On them a stream may send as many output tokens as its reservation
covers (`allowance`): the output reservation itself, what a total reservation holds beyond the
prompt bound, what a cost reservation holds beyond the prompt's cost, at the output rate.

Past that the stream must *extend*: take `k` more output tokens (k on the token buckets, k times
the output rate on a cost bucket) from the growing buckets, all or none, before the chunk that
needs them goes out. `k` is a `step` (so a stream asks its store once per step, not once per
chunk) or, when a whole step no longer fits, just what the chunk needs. What was taken by
extensions is part of what the request reserved: the limiter's settle charges real usage minus
reservation and extensions together, so nothing is counted twice.

Unlike a reservation, an extension is never capped at a bucket's capacity: it is what the
stream may send, so it is taken whole (`whole`) or refused, and one larger than a bucket
(`fits_capacity` false) is refused without asking a store, whose reserve would cap it.

Sans-IO: values in, values out; the stores and the per-chunk hook are tollway.gateway.limits.
"""
from __future__ import annotations

import math

from tollway.core.accounting.pricing import PER_TOKEN, Price
from tollway.core.limits.policy import MEASURES, Plan

__all__ = ["GROWING", "STEP_TOKENS", "allowance", "extension", "fits_capacity", "growing", "output_rate", "prompt_cost",
           "step", "whole"]

GROWING = frozenset(MEASURES.index(m) for m in ("output_tokens", "total_tokens", "cost_usd"))
_OUTPUT, _TOTAL, _COST = (MEASURES.index(m) for m in ("output_tokens", "total_tokens", "cost_usd"))
_PROMPT = MEASURES.index("input_tokens")
# Output tokens one extension takes. Bigger: fewer store calls (with Redis, at most one round
# trip per step when the local lease cannot cover it); smaller: less quota held by a stream that
# stops soon after (held, not lost: the settle gives back what was not sent).
STEP_TOKENS = 128
_STEP_SHARE = 8  # a step is at most this share of the smallest growing bucket, so small ones still extend


def growing(plan: Plan) -> Plan | None:
    """The buckets of `plan` that a stream's output draws on, as a plan of their own (the
    stores bind it like any plan, to the same buckets), or None if it has none."""
    found = tuple(b for b, m in zip(plan.buckets, plan.measures) if m in GROWING)
    return Plan(found, -1, -1) if found else None


def output_rate(price: Price) -> float:
    """USD per output token: the most one can cost (reasoning billed above output), as the
    reservation's `upper_cost` counts it."""
    return max(price.output, price.reasoning or 0.0) * PER_TOKEN


def prompt_cost(prompt_tokens: float, price: Price) -> float:
    return prompt_tokens * max(price.input, price.cache_write or 0.0) * PER_TOKEN


def allowance(plan: Plan, demand: tuple[float, ...], price: Price) -> float:
    """Output tokens the reservation `demand` (tollway.core.limits.policy.reserve) covers on
    the growing buckets of `plan` (inf if it has none, or only free cost ones)."""
    prompt, rate = demand[_PROMPT], output_rate(price)
    most = math.inf
    for m, cap in zip(plan.measures, plan.capacities):
        held = min(demand[m], cap)
        if m == _OUTPUT:
            most = min(most, held)
        elif m == _TOTAL:
            most = min(most, held - prompt)
        elif m == _COST and rate > 0.0:
            most = min(most, (held - prompt_cost(prompt, price)) / rate)
    return max(most, 0.0)


def extension(tokens: float, rate: float, usd: float = 0.0) -> tuple[float, ...]:
    """The demand (MEASURES order) of `tokens` more output tokens: nothing on requests, input
    or concurrency, `tokens` on output and total, their cost at `rate` USD per token (and `usd`
    more: a prompt cost the reservation did not hold, `unreserved_prompt_cost`)."""
    return (0.0, 0.0, tokens, tokens, tokens * rate + usd, 0.0)


def fits_capacity(plan: Plan, demand: tuple[float, ...]) -> bool:
    """True if no bucket of `plan` would take more than its capacity of the extension `demand`.
    Only such a demand is taken whole by a store's `decide` (the bucket kernel, the Redis lease),
    which caps at capacity as an admission must; a larger one can never fit (NaN neither)."""
    return all(demand[m] <= cap for m, cap in zip(plan.measures, plan.capacities))


def whole(plan: Plan, demand: tuple[float, ...]) -> tuple[float, ...]:
    """What each bucket of `plan` takes of the extension `demand`, for a store's `take`: the
    demand of its measure, not capped (tollway.core.limits.policy.amounts caps a reservation), so
    one larger than a bucket is refused there too, and the refusal names that bucket."""
    return tuple([demand[m] for m in plan.measures])


def unreserved_prompt_cost(demand: tuple[float, ...], price: Price) -> float:
    """What the prompt costs at `price` beyond the dollars `demand` reserved: a stream priced
    only once served (an alias route with no price of its own reserved none)."""
    return max(prompt_cost(demand[_PROMPT], price) - demand[_COST], 0.0)


def step(sub: Plan, rate: float) -> float:
    """Output tokens an extension asks for at least: STEP_TOKENS, or less on small buckets."""
    smallest = math.inf
    for m, cap in zip(sub.measures, sub.capacities):
        if m == _COST:
            if rate > 0.0:
                smallest = min(smallest, cap / rate)
        else:
            smallest = min(smallest, cap)
    if smallest == math.inf:  # only cost buckets, and no price (yet): nothing bounds a step
        return float(STEP_TOKENS)
    return max(1.0, min(float(STEP_TOKENS), math.floor(smallest / _STEP_SHARE)))

"""The limiter on the in-memory store, in process, with an injected clock."""
from __future__ import annotations

import asyncio

import pytest

from tollway.core import config as config_mod
from tollway.core.errors import GatewayError
from tollway.core.request import RequestHead
from tollway.ext.usage import Usage
from tollway.gateway.limits.limiter import Limiter, build_limiter
from tollway.gateway.limits.memory import MemoryBuckets
from tollway.gateway.telemetry.metrics import Metrics

HASH = "sha256:" + "0" * 64

CONFIG = f"""
providers: [{{name: up, schema: fake}}]
models:
  - name: m
    targets: [{{provider: up}}]
    price: {{input: 1000000, output: 1000000}}   # $1 per token: budgets in round numbers
keys:
  - name: k
    key_hash: "{HASH}"
    team: t
    limits:
      - {{requests: 3, per: 1m}}
      - {{total_tokens: 1000, per: 1m}}
      - {{concurrent: 2}}
teams:
  - name: t
    limits: [{{cost_usd: 500, per: 1d}}]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def limiter(clock):
    cfg = config_mod.loads(CONFIG)
    return Limiter(cfg, MemoryBuckets(clock), Metrics())


def key_of(limiter):
    return config_mod.loads(CONFIG).keys[0]


BODY = b"x" * 100  # prompt bound: 100 tokens
HEAD = RequestHead(model="m", max_tokens=50)


async def settled(limiter, lease, usage):
    limiter.settle(lease, usage, "m")
    await asyncio.sleep(0)  # settle runs on the next loop iteration, after the response


async def test_reserve_returns_openai_headers_and_takes_quota(limiter):
    lease = await limiter.reserve(key_of(limiter), "m", "chat", HEAD, BODY)
    headers = dict(lease.headers)
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "850"
    assert headers["x-ratelimit-reset-tokens"] == "9s"  # 150 tokens at 1000/60 per second


async def test_settle_refunds_what_was_not_used(limiter):
    k = key_of(limiter)
    lease = await limiter.reserve(k, "m", "chat", HEAD, BODY)
    await settled(limiter, lease, Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15))
    levels = await limiter.store.levels(limiter.policy)
    assert levels["key:k:total_tokens:60s"] == pytest.approx(985)
    assert levels["key:k:concurrent:inflight"] == 2
    assert levels["team:t:cost_usd:86400s"] == pytest.approx(500 - 15)


async def test_request_limit_gives_429_with_retry_after_from_refill(limiter, clock):
    k = key_of(limiter)
    for _ in range(3):
        await settled(limiter, await limiter.reserve(k, "m", "chat", HEAD, BODY), None)
    with pytest.raises(GatewayError) as err:
        await limiter.reserve(k, "m", "chat", HEAD, BODY)
    assert (err.value.status, err.value.code, err.value.type) == (429, "rate_limit_exceeded", "requests")
    assert dict(err.value.headers)["retry-after-ms"] == "20000"  # one request per 20 s
    clock.now += 20.0
    assert await limiter.reserve(k, "m", "chat", HEAD, BODY) is not None


async def test_concurrency_is_held_until_settled(limiter):
    k = key_of(limiter)
    first = await limiter.reserve(k, "m", "chat", HEAD, BODY)
    await limiter.reserve(k, "m", "chat", HEAD, BODY)
    with pytest.raises(GatewayError, match="concurrent requests in flight"):
        await limiter.reserve(k, "m", "chat", HEAD, BODY)
    await settled(limiter, first, None)
    assert await limiter.reserve(k, "m", "chat", HEAD, BODY) is not None


async def test_exhausted_budget_is_insufficient_quota(limiter):
    k = key_of(limiter)
    lease = await limiter.reserve(k, "m", "chat", HEAD, BODY)
    await settled(limiter, lease, Usage(prompt_tokens=400, completion_tokens=200, total_tokens=600))  # $600 of $500
    with pytest.raises(GatewayError) as err:
        await limiter.reserve(k, "m", "chat", HEAD, BODY)
    assert err.value.code == "insufficient_quota"
    assert dict(err.value.headers)["x-should-retry"] == "false"


async def test_decisions_are_counted_by_limit(limiter):
    k = key_of(limiter)
    for _ in range(4):
        try:
            await settled(limiter, await limiter.reserve(k, "m", "chat", HEAD, BODY), None)
        except GatewayError:
            pass
    text = limiter.metrics.exposition().decode()
    assert 'tollway_rate_limit_decisions_total{decision="allowed",limit="key:k:requests:60s"} 3.0' in text
    assert 'tollway_rate_limit_decisions_total{decision="limited",limit="key:k:requests:60s"} 1.0' in text


async def test_reload_keeps_levels_of_unchanged_buckets_and_applies_new_capacity(limiter):
    k = key_of(limiter)
    await limiter.reserve(k, "m", "chat", HEAD, BODY)
    bigger = config_mod.loads(CONFIG.replace("{requests: 3, per: 1m}", "{requests: 30, per: 1m}"))
    reloaded = build_limiter(bigger, limiter.metrics, limiter)
    assert reloaded.store is limiter.store
    levels = await reloaded.store.levels(reloaded.policy)
    assert levels["key:k:total_tokens:60s"] == pytest.approx(850)  # unchanged bucket kept its level
    assert "key:k:requests:1800s" not in levels and levels["key:k:requests:60s"] == pytest.approx(2)


async def test_no_limits_means_no_lease():
    free = config_mod.loads(f"""
providers: [{{name: up, schema: fake}}]
models: [{{name: m, targets: [{{provider: up}}]}}]
keys: [{{name: k, key_hash: "{HASH}"}}]
""")
    plain = Limiter(free, MemoryBuckets(), Metrics())
    assert not plain.enabled
    assert await plain.reserve(free.keys[0], "m", "chat", HEAD, BODY) is None


def test_admit_decides_without_a_loop_and_agrees_with_reserve(limiter, clock):
    # The gateway's hot path: no coroutine, no event loop. The memory store always decides.
    k = key_of(limiter)
    leases = [limiter.admit(k, "m", "chat", HEAD, BODY) for _ in range(2)]  # the concurrent limit is 2
    assert all(lease.metered and lease.demand[0] == 1.0 for lease in leases)
    assert dict(leases[1].headers)["x-ratelimit-remaining-requests"] == "1"
    with pytest.raises(GatewayError) as exc:
        limiter.admit(k, "m", "chat", HEAD, BODY)
    assert exc.value.status == 429 and exc.value.code == "rate_limit_exceeded"
    for lease in leases:
        limiter.settle(lease, Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15), "m")
    third = limiter.admit(k, "m", "chat", HEAD, BODY)  # a slot is free again; one request left
    assert dict(third.headers)["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(GatewayError):  # the key's limits hold for every model it uses
        limiter.admit(k, "another-model", "chat", HEAD, BODY)


def test_admit_is_none_for_a_key_without_limits():
    cfg = config_mod.loads(CONFIG.replace("keys:\n", f'keys:\n  - {{name: free, key_hash: "sha256:{"1" * 64}"}}\n'))
    limiter = Limiter(cfg, MemoryBuckets(Clock()), Metrics())
    assert limiter.enabled
    assert limiter.admit(cfg.keys[0], "m", "chat", HEAD, BODY) is None


class RefusingWithRoom(MemoryBuckets):
    """A store that refuses while the levels it reports show room (levels read apart from the
    decision, as a store may): the limiter must still answer a 429."""

    def decide(self, gate, demand):
        return False, gate.levels(self._clock())


def test_a_refusal_whose_levels_show_room_is_still_a_429(clock):
    limiter = Limiter(config_mod.loads(CONFIG), RefusingWithRoom(clock), Metrics())
    with pytest.raises(GatewayError) as err:  # was a ValueError: a 500 internal_error
        limiter.admit(key_of(limiter), "m", "chat", HEAD, BODY)
    assert (err.value.status, err.value.code) == (429, "rate_limit_exceeded")
    assert dict(err.value.headers)["retry-after"] == "1"
    assert 'decision="limited"' in limiter.metrics.exposition().decode()

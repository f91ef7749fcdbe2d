"""The Redis bucket store against a real Redis: the Lua arithmetic, batching, expiry, NOSCRIPT,
and an outage (on a private redis-server this test starts and kills)."""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import redis
import redis.asyncio as aioredis

from tests.harness import free_port
from tests.slow_redis import SlowRedis
from tollway.core import config as config_mod
from tollway.core.errors import GatewayError
from tollway.core.kernels import BucketTable
from tollway.core.limits.policy import Bucket, Plan
from tollway.core.request import RequestHead
from tollway.ext.usage import Usage
from tollway.gateway.limits import redis_store
from tollway.gateway.limits.limiter import AskStore, Limiter, StoreUnavailable
from tollway.gateway.limits.redis_store import BUCKETS_LUA, RedisBuckets
from tollway.gateway.telemetry.metrics import Metrics

SHARED_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def unique_prefix() -> str:
    return f"tollway-test-{os.getpid()}-{random.getrandbits(40):x}"


@pytest.fixture
async def store():
    prefix = unique_prefix()
    s = RedisBuckets(SHARED_URL, prefix, Metrics())
    yield s
    await s.aclose()
    cleanup = redis.Redis.from_url(SHARED_URL)
    for key in cleanup.scan_iter(match=f"{{{prefix}}}:*", count=1000):
        cleanup.delete(key)
    cleanup.close()


def plan_of(*buckets: Bucket) -> Plan:
    return Plan(tuple(buckets), -1, -1)


async def test_lua_arithmetic_matches_the_bucket_kernel(store):
    """Differential: the same random ops, with the same pinned clock, on both."""
    rng = random.Random(7)
    buckets = [Bucket(f"b{i}", "key", f"k{i}", "total_tokens", cap, win)
               for i, (cap, win) in enumerate([(100, 10), (50, 1), (1000, 60), (3, 0)])]
    table = BucketTable()
    slots = [table.add(b.capacity, b.refill) for b in buckets]
    now = 1_000_000.0
    for _ in range(300):
        now += rng.choice([0.0, 0.01, 0.3, 2.0])
        store.now = now
        pick = rng.sample(range(len(buckets)), rng.randint(1, len(buckets)))
        plan = plan_of(*[buckets[i] for i in pick])
        amounts = tuple(float(rng.randint(0, 60) if buckets[i].window else 1) for i in pick)
        if rng.random() < 0.6:
            taken, levels = await store.take(store.bind(plan), amounts)
            assert taken == (table.try_take([slots[i] for i in pick], amounts, now) == 0.0)
            assert levels == pytest.approx(tuple(table.level(slots[i], now) for i in pick), abs=1e-6)
        else:
            deltas = tuple(rng.uniform(-30, 30) for _ in pick)
            store.charge(store.bind(plan), deltas)
            for i, d in zip(pick, deltas):
                (table.take if d > 0 else table.give)(slots[i], abs(d), now)
            await asyncio.sleep(0.005)  # let the settle ride out on its own
    levels = await store.levels(LimitPolicyStub(buckets))
    assert [levels[b.id] for b in buckets] == pytest.approx([table.level(s, now) for s in slots], abs=1e-6)


class LimitPolicyStub:
    """Just the `buckets` mapping `levels()` reads."""

    def __init__(self, buckets):
        self.buckets = {b.id: b for b in buckets}


async def test_concurrent_decisions_share_one_round_trip(store):
    calls = 0
    real = store.client.evalsha

    async def counting(*args):
        nonlocal calls
        calls += 1
        return await real(*args)

    store.client.evalsha = counting
    plan = plan_of(Bucket("rpm", "key", "k", "requests", 1000, 60), Bucket("tpm", "key", "k", "total_tokens", 1e6, 60))
    results = await asyncio.gather(*(store.take(store.bind(plan), (1.0, 100.0)) for _ in range(200)))
    assert all(taken for taken, _ in results)
    remaining = sorted(levels[0] for _, levels in results)
    assert remaining[0] == pytest.approx(800, abs=1) and remaining[-1] == pytest.approx(999, abs=1)
    assert calls <= 3  # one batch, perhaps split by the first request's own call


async def test_bucket_keys_share_one_hash_tag_and_expire_when_full_again(store):
    plan = plan_of(Bucket("key:k:total_tokens:60s", "key", "k", "total_tokens", 600, 60),
                   Bucket("key:k:concurrent:inflight", "key", "k", "concurrent", 5, 0))
    await store.take(store.bind(plan), (300.0, 1.0))
    r = aioredis.Redis.from_url(SHARED_URL)
    tokens_key = store.key("key:k:total_tokens:60s")
    assert tokens_key.startswith(f"{{{store.prefix}}}:")
    ttl_ms = await r.pttl(tokens_key)
    assert 30_000 < ttl_ms <= 31_000  # 300 tokens at 10/s, plus a second of margin
    assert await r.pttl(store.key("key:k:concurrent:inflight")) > 3_000_000
    await r.aclose()


async def test_a_bucket_slow_to_refill_expires_within_the_integer_redis_takes(store):
    """A state's expiry is the time it takes to refill: with a tiny refill (a long window) and
    a deep debt it ran past what PEXPIRE accepts, every call of the script failed, and each
    use of that one key put every bucket of every key into the Redis outage mode. Capped."""
    slow = Bucket("key:k:cost_usd:366d", "key", "k", "cost_usd", 0.001, 366 * 86400.0)
    plan = plan_of(slow)
    store.charge(store.bind(plan), (1e12,))  # a debt far past the capacity
    await asyncio.sleep(0.05)
    taken, _ = await store.take(store.bind(plan), (0.0,))
    assert not taken and store._down_since is None  # the script ran and answered (in debt): no outage
    r = aioredis.Redis.from_url(SHARED_URL)
    assert 0 < await r.pttl(store.key(slow.id)) <= 400 * 86400 * 1000
    await r.aclose()


async def test_a_denied_reservation_takes_nothing(store):
    plan = plan_of(Bucket("a", "key", "k", "requests", 10, 60), Bucket("b", "key", "k", "total_tokens", 100, 60))
    store.now = 5000.0
    assert (await store.take(store.bind(plan), (1.0, 90.0)))[0]
    taken, levels = await store.take(store.bind(plan), (1.0, 20.0))
    assert not taken
    assert levels == pytest.approx((9.0, 10.0))


# -- a private redis-server: NOSCRIPT and outages ------------------------------------------

class PrivateRedis:
    """A redis-server of our own on a free port (never touch the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    yield server
    server.stop()


async def test_script_is_reloaded_after_noscript(private_redis):
    store = RedisBuckets(private_redis.url, unique_prefix(), Metrics())
    plan = plan_of(Bucket("x", "key", "k", "requests", 2, 60))
    assert (await store.take(store.bind(plan), (1.0,)))[0]
    redis.Redis(port=private_redis.port).script_flush()
    assert (await store.take(store.bind(plan), (1.0,)))[0]
    assert not (await store.take(store.bind(plan), (1.0,)))[0]  # and the level survived
    await store.aclose()


def redis_limited(limits: str, on_store_error: str = "open") -> str:
    """A config whose one key `k` has `limits` on the Redis backend."""
    return f"""
providers: [{{name: up, schema: fake}}]
models: [{{name: m, targets: [{{provider: up}}]}}]
keys:
  - name: k
    key_hash: "sha256:{"0" * 64}"
    limits: {limits}
rate_limits: {{backend: redis, on_store_error: {on_store_error}}}
"""


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_outage_follows_on_store_error_and_recovers(private_redis, mode, caplog):
    cfg = config_mod.loads(redis_limited("[{requests: 3, per: 1h}, {concurrent: 1}]", mode))
    metrics = Metrics()
    store = RedisBuckets(private_redis.url, unique_prefix(), metrics)
    limiter = Limiter(cfg, store, metrics)
    key, head = cfg.keys[0], RequestHead(model="m", max_tokens=5)

    lease = await limiter.reserve(key, "m", "chat", head, b"{}")
    assert lease is not None and lease.metered
    private_redis.stop()
    limiter.settle(lease, Usage(), "m")  # the settle is held, not lost
    await asyncio.sleep(0.01)

    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(await limiter.reserve(key, "m", "chat", head, b"{}"))
        except Exception as exc:  # noqa: BLE001 - collected and checked below
            outcomes.append(exc)
    if mode == "open":
        assert all(o is not None and not o.metered for o in outcomes)
    else:
        assert all(getattr(o, "status", None) == 503 for o in outcomes)
        assert outcomes[0].code == "rate_limit_store_unavailable"
    errors = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
    assert len(errors) == 1  # one line per incident, not per request
    text = metrics.exposition().decode()
    assert f'tollway_rate_limit_store_errors_total{{backend="redis",mode="{mode}"}} 5.0' in text

    private_redis.start()  # empty again: it ran without persistence
    await asyncio.sleep(1.1)  # past the retry interval
    first = await limiter.reserve(key, "m", "chat", head, b"{}")
    assert first is not None and first.metered
    with pytest.raises(Exception) as err:  # the concurrency slot is held again: limits are back
        await limiter.reserve(key, "m", "chat", head, b"{}")
    assert getattr(err.value, "status", None) == 429
    assert any("answers again" in r.getMessage() for r in caplog.records)
    await store.aclose()


# -- local leases (gateway/limits/lease.py) ---------------------------------------------

def leasing_store(prefix: str) -> RedisBuckets:
    return RedisBuckets(SHARED_URL, prefix, Metrics(), leasing=True)


def counting_calls(store: RedisBuckets) -> list[int]:
    calls = [0]
    real = store.client.evalsha

    async def counting(*args):
        calls[0] += 1
        return await real(*args)

    store.client.evalsha = counting
    return calls


async def redis_level(prefix: str, bucket: Bucket) -> float:
    probe = RedisBuckets(SHARED_URL, prefix, Metrics())
    try:
        return (await probe.levels(LimitPolicyStub([bucket])))[bucket.id]
    finally:
        await probe.aclose()


async def decide_or_take(store: RedisBuckets, plan: Plan, demand: tuple[float, ...]) -> bool:
    """What the limiter does: decide from the lease, else ask Redis."""
    decided = store.decide(store.bind(plan), demand)
    if decided is None:
        decided = await store.take(store.bind(plan), tuple(min(demand[m], b.capacity) for m, b in zip(plan.measures, plan.buckets)))
    return decided[0]


REQUEST = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # one request, per measure (tollway.core.limits.policy.MEASURES)


async def test_a_lease_decides_requests_locally_and_tops_up_in_the_background(store):
    leasing = leasing_store(store.prefix)
    calls = counting_calls(leasing)
    bucket = Bucket("key:k:requests:3600s", "key", "k", "requests", 1600, 3600)
    plan = plan_of(bucket)
    try:
        assert leasing.decide(leasing.bind(plan), REQUEST) is None  # nothing leased yet: Redis decides
        assert (await leasing.take(leasing.bind(plan), (1.0,)))[0]
        assert calls[0] == 1
        local = 0
        for _ in range(50):
            decided = leasing.decide(leasing.bind(plan), REQUEST)
            if decided is None:
                assert (await leasing.take(leasing.bind(plan), (1.0,)))[0]
            else:
                local += 1
                assert decided[0] and decided[1][0] <= 1600
            await asyncio.sleep(0)  # let a background top-up go out
        assert local >= 40 and calls[0] <= 12  # most decisions never reached Redis
        # Redis has given out what was used plus what is leased, never more than its capacity.
        await asyncio.sleep(0.01)  # the last top-up is back
        held = leasing._book.table.level(0, 0.0)
        assert await redis_level(store.prefix, bucket) == pytest.approx(1600 - 51 - held, abs=0.5)  # 0.44/s refill
    finally:
        await leasing.aclose()  # gives the lease back
    assert await redis_level(store.prefix, bucket) == pytest.approx(1600 - 51, abs=0.5)


async def test_two_leasing_processes_stay_within_the_documented_bound(store):
    from tollway.gateway.limits.lease import LEASE_FRACTION, MAX_HOLD_SLICES

    capacity = 400.0
    bucket = Bucket("key:k:requests:3600s", "key", "k", "requests", capacity, 3600)
    plan = plan_of(bucket)
    a, b = leasing_store(store.prefix), leasing_store(store.prefix)
    try:
        admitted = 0
        for _ in range(300):
            for gw in (a, b):
                admitted += await decide_or_take(gw, plan, REQUEST)
        bound = 2 * MAX_HOLD_SLICES * capacity * LEASE_FRACTION  # N processes x what each may hold
        assert capacity - bound <= admitted <= capacity + 1  # +1: refill during the test (0.11/s)
    finally:
        await a.aclose()
        await b.aclose()
    assert await redis_level(store.prefix, bucket) == pytest.approx(capacity - admitted, abs=1)


async def test_gauges_and_small_buckets_are_decided_by_redis_every_time(store):
    leasing = leasing_store(store.prefix)
    calls = counting_calls(leasing)
    gauge_plan = plan_of(Bucket("g:rpm", "key", "g", "requests", 1e6, 60), Bucket("g:inflight", "key", "g", "concurrent", 5, 0))
    small_plan = plan_of(Bucket("s:rph", "key", "s", "requests", 10, 3600))  # a slice would be under 4 requests
    try:
        for plan in (gauge_plan, small_plan):
            for _ in range(3):
                assert await decide_or_take(leasing, plan, REQUEST)
        assert calls[0] == 6
        assert await redis_level(store.prefix, small_plan.buckets[0]) == pytest.approx(7, abs=1e-3)
    finally:
        await leasing.aclose()


async def test_refunds_refill_the_lease_and_the_excess_goes_back_to_redis(store):
    leasing = leasing_store(store.prefix)
    bucket = Bucket("key:k:total_tokens:86400s", "key", "k", "total_tokens", 1_000_000, 86400)
    plan = plan_of(bucket)
    demand = (1.0, 500.0, 500.0, 1000.0, 0.0, 1.0)
    try:
        assert await decide_or_take(leasing, plan, demand)
        held = leasing._book.table.level(0, 0.0)
        assert held > 0
        leasing.settle(leasing.bind(plan), demand, (1.0, 10.0, 10.0, 20.0, 0.0, 0.0))  # used 20 of 1000
        assert leasing._book.table.level(0, 0.0) <= 2 * leasing._book.slice[0]
    finally:
        await leasing.aclose()  # the lease goes back, and the refund beyond it was sent
    assert await redis_level(store.prefix, bucket) == pytest.approx(1_000_000 - 20, abs=1)  # refill: 11.6/s


async def test_usage_beyond_the_reservation_reaches_redis_within_the_lease_ttl(store):
    from tollway.gateway.limits.lease import LEASE_TTL

    leasing = leasing_store(store.prefix)
    bucket = Bucket("key:k:total_tokens:86400s", "key", "k", "total_tokens", 1_000_000, 86400)
    plan = plan_of(bucket)
    demand = (1.0, 50.0, 50.0, 100.0, 0.0, 1.0)
    try:
        assert await decide_or_take(leasing, plan, demand)
        leasing.settle(leasing.bind(plan), demand, (1.0, 50.0, 5000.0, 5050.0, 0.0, 0.0))  # 4950 more than reserved
        await asyncio.sleep(LEASE_TTL + 0.2)  # the lease (now in debt) went back to Redis
        assert leasing._book.table.level(0, 0.0) == 0.0
        assert await redis_level(store.prefix, bucket) == pytest.approx(1_000_000 - 5050, abs=20)  # refill: 11.6/s
    finally:
        await leasing.aclose()


async def test_admit_asks_the_store_until_a_lease_covers_the_request(store):
    cfg = config_mod.loads(redis_limited("[{requests: 100000, per: 1h}]"))
    leasing = leasing_store(store.prefix)
    limiter = Limiter(cfg, leasing, Metrics())
    key, head = cfg.keys[0], RequestHead(model="m", max_tokens=5)
    try:
        decides = []
        real_decide = leasing.decide
        leasing.decide = lambda bound, demand: decides.append(demand) or real_decide(bound, demand)
        pending = limiter.admit(key, "m", "chat", head, b"{}")
        assert isinstance(pending, AskStore)  # nothing leased yet
        first = await limiter.ask_store(pending)  # Redis reserves and grants a slice
        assert len(decides) == 1  # the store was asked locally once, not again on the way to Redis
        assert first is not None and first.metered
        local = limiter.admit(key, "m", "chat", head, b"{}")  # now decided here, no await
        assert not isinstance(local, AskStore) and local.metered
        assert int(dict(local.headers)["x-ratelimit-remaining-requests"]) < 100000
    finally:
        await leasing.aclose()


async def test_a_refusal_by_redis_is_a_429_while_this_process_holds_a_lease_on_the_bucket(store):
    """Redis refuses (another replica drained it) a plan whose model bucket is not leased here,
    while this process still holds a slice of the key's bucket. The refusal's levels were
    Redis's plus that slice, showed room in every bucket, and the 429 could not be built: a
    500. The denial is Redis's, so its levels and its retry-after are Redis's."""
    cfg = config_mod.loads(f"""
providers: [{{name: up, schema: fake}}]
models:
  - {{name: m1, targets: [{{provider: up}}]}}
  - {{name: m2, targets: [{{provider: up}}], limits: [{{requests: 100000, per: 1h}}]}}
keys:
  - {{name: k, key_hash: "sha256:{"0" * 64}", limits: [{{requests: 64, per: 1h}}]}}
rate_limits: {{backend: redis}}
""")
    leasing = leasing_store(store.prefix)
    limiter = Limiter(cfg, leasing, Metrics())
    key = cfg.keys[0]
    bucket = limiter.policy.buckets["key:k:requests:3600s"]
    store.now = leasing.now = 5000.0  # one clock for both "replicas": no refill in between
    try:
        await limiter.reserve(key, "m1", "chat", RequestHead(model="m1", max_tokens=5), b"{}")
        assert leasing._book.table.level(leasing._book._slot[bucket.id], 0.0) >= 1  # a slice is held here
        left = (await store.levels(LimitPolicyStub([bucket])))[bucket.id]
        assert (await store.take(store.bind(plan_of(bucket)), (left,)))[0]  # another replica spends the rest
        with pytest.raises(GatewayError) as err:
            await limiter.reserve(key, "m2", "chat", RequestHead(model="m2", max_tokens=5), b"{}")
        assert (err.value.status, err.value.code) == (429, "rate_limit_exceeded")
        assert dict(err.value.headers)["retry-after-ms"] == "56250"  # one request of an empty 64/h bucket
    finally:
        await leasing.aclose()


async def test_lease_slots_of_keys_revoked_are_freed_and_reused(store, monkeypatch):
    """Run-time keys made, used and revoked (each change rebuilds the limiter over the same
    store): the lease table kept a slot for every bucket it ever leased, and gave every one of
    them back each second. The slots of buckets gone from the policy are freed and, after a
    quarantine (none here), reused."""
    from tollway.gateway.limits import lease as lease_mod
    from tollway.gateway.limits.limiter import build_limiter

    monkeypatch.setattr(lease_mod, "LEASE_QUARANTINE", 0.0)
    metrics, limiter = Metrics(), None
    head = RequestHead(model="m", max_tokens=5)
    try:
        for i in range(40):
            cfg = config_mod.loads(f"""
providers: [{{name: up, schema: fake}}]
models: [{{name: m, targets: [{{provider: up}}]}}]
keys:
  - {{name: user-{i}, key_hash: "sha256:{i:064x}", limits: [{{requests: 1000, per: 1h}}, {{total_tokens: 1000000, per: 1h}}]}}
rate_limits: {{backend: redis, redis_url: '{SHARED_URL}', key_prefix: {store.prefix}}}
""")
            limiter = build_limiter(cfg, metrics, limiter)
            limiter.settle(await limiter.reserve(cfg.keys[0], "m", "chat", head, b"{}"), Usage(1, 1, 2), "m")
        book = limiter.store._book
        assert len(book.table) <= 4  # two buckets live, two freed by the last change
    finally:
        await limiter.store.aclose()
    # every key's lease went back to Redis: what is left there is what each key used
    for i in (0, 39):
        used = await redis_level(store.prefix, Bucket(f"key:user-{i}:requests:3600s", "key", f"user-{i}", "requests", 1000, 3600))
        assert used == pytest.approx(999, abs=0.5)  # (refill: 0.28/s)


def test_a_late_settle_on_a_freed_lease_slot_goes_to_its_own_bucket():
    """A request admitted before its key was revoked settles after: into the slot its plan was
    bound to. That slot stays its bucket's until the quarantine is over, so the refund goes back
    to that bucket in Redis, never into the lease of a bucket made since."""
    from tollway.gateway.limits.lease import LEASE_QUARANTINE, LeaseBook

    book = LeaseBook()
    old = Bucket("key:old:total_tokens:60s", "key", "old", "total_tokens", 16000, 60)
    gate = book.gate(plan_of(old), 0.0)
    wants = book.wants(gate.slots, (100.0,))
    assert wants == (400.0,)  # a slice: 4 requests
    book.granted(gate.slots, wants, wants, (15600.0,), 0.0)
    demand = (1.0, 10.0, 90.0, 100.0, 0.0, 1.0)
    assert book.decide(gate, demand) is not None
    assert book.surrender() == [(old, 300.0)]  # (the store gives leases back before a change)
    book.reconfigure({}, 10.0)  # the key is revoked
    new = Bucket("key:new:total_tokens:60s", "key", "new", "total_tokens", 16000, 60)
    assert book.gate(plan_of(new), 10.0).slots != gate.slots  # quarantined: not reused yet
    book.settle(gate, demand, (1.0, 10.0, 10.0, 20.0, 0.0, 0.0))  # the late settle: 80 tokens back
    assert book.surrender() == [(old, 80.0)]  # to the old bucket
    assert book.wants(gate.slots, (100.0,)) is None  # and the old plan leases no more: Redis decides it
    book.reconfigure({new.id: new}, 10.0 + LEASE_QUARANTINE + 1)
    newer = Bucket("key:newer:total_tokens:60s", "key", "newer", "total_tokens", 16000, 60)
    reused = book.gate(plan_of(newer), 10.0 + LEASE_QUARANTINE + 1)
    assert reused.slots == gate.slots and book.buckets[reused.slots[0]] == newer  # now reused, empty
    assert book.table.level(reused.slots[0], 0.0) == 0.0 and book.surrender() == []


# -- replies slower than the socket timeout: the script ran, the answer was lost --------------

async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


def slow_limiter(proxy: SlowRedis, prefix: str, limits: str) -> tuple[Limiter, RedisBuckets]:
    cfg = config_mod.loads(redis_limited(limits, "open"))
    store = RedisBuckets(proxy.url, prefix, Metrics(), leasing=True)
    return Limiter(cfg, store, Metrics()), store


async def test_a_reservation_whose_reply_timed_out_gives_its_slot_back(store, slow_redis):
    """The script took the concurrency slot, its reply came after the socket timeout, and the
    request was decided without the store (open: unmetered, so its settle gives nothing back).
    The slot was never returned: the key stayed locked out (an hour and more: every refused
    retry renewed the gauge's expiry). Once Redis answers, the store learns that the batch ran
    and gives back what it took."""
    limiter, slow = slow_limiter(slow_redis, store.prefix, "[{concurrent: 1}]")
    k, head = config_mod.loads(redis_limited("[{concurrent: 1}]")).keys[0], RequestHead(model="m", max_tokens=5)
    gauge = store.key("key:k:concurrent:inflight")
    direct = redis.Redis.from_url(SHARED_URL)
    try:
        limiter.settle(await limiter.reserve(k, "m", "chat", head, b"{}"), Usage(), "m")  # loads the script
        await until(lambda: direct.hget(gauge, "l") == b"1")
        slow_redis.delay = 0.7
        lease = await limiter.reserve(k, "m", "chat", head, b"{}")
        assert not lease.metered  # decided without the store (the reply is late)
        assert direct.hget(gauge, "l") == b"0"  # ... but the script took the slot
        limiter.settle(lease, Usage(), "m")
        slow_redis.delay = 0.0
        await until(lambda: direct.hget(gauge, "l") == b"1")  # given back once Redis answers
        assert (await limiter.reserve(k, "m", "chat", head, b"{}")).metered
    finally:
        await slow.aclose()
        direct.close()


async def test_a_reservation_and_lease_whose_reply_timed_out_go_back(store, slow_redis):
    """The same with a leased bucket: the script reserved the request and granted a slice the
    process never booked (it saw a timeout); both go back to Redis."""
    limiter, slow = slow_limiter(slow_redis, store.prefix, "[{requests: 1000, per: 1h}]")
    k, head = config_mod.loads(redis_limited("[{requests: 1000, per: 1h}]")).keys[0], RequestHead(model="m", max_tokens=5)
    bucket = limiter.policy.buckets["key:k:requests:3600s"]
    direct = redis.Redis.from_url(SHARED_URL)
    try:
        await slow.client.script_load(BUCKETS_LUA)
        slow_redis.delay = 0.7
        lease = await limiter.reserve(k, "m", "chat", head, b"{}")
        assert not lease.metered
        assert float(direct.hget(store.key(bucket.id), "l")) < 999  # the request and a slice left Redis
        limiter.settle(lease, Usage(), "m")
        slow_redis.delay = 0.0
        await until(lambda: slow._down_since is None and not slow._queue and not slow._drains)
        assert slow._book is not None and slow._book.table.level(0, 0.0) == 0.0  # nothing booked here
        assert await redis_level(store.prefix, bucket) == pytest.approx(1000, abs=0.1)  # all of it back
    finally:
        await slow.aclose()
        direct.close()


async def test_settles_of_a_batch_whose_reply_timed_out_are_applied_once(store, slow_redis):
    """A settle's batch ran in Redis but its reply came late: the settle was held and sent
    again when Redis answered, so it was applied twice (a slot given back twice: limit + 1
    requests at once; a refund of tokens doubled)."""
    limiter, slow = slow_limiter(slow_redis, store.prefix, "[{concurrent: 3}]")
    k, head = config_mod.loads(redis_limited("[{concurrent: 3}]")).keys[0], RequestHead(model="m", max_tokens=5)
    gauge = store.key("key:k:concurrent:inflight")
    direct = redis.Redis.from_url(SHARED_URL)
    try:
        a = await limiter.reserve(k, "m", "chat", head, b"{}")
        await limiter.reserve(k, "m", "chat", head, b"{}")
        slow_redis.delay = 0.7
        limiter.settle(a, Usage(), "m")
        await until(lambda: slow._down_since is not None)  # the settle's reply timed out ...
        assert direct.hget(gauge, "l") == b"2"  # ... after it ran
        slow_redis.delay = 0.0
        await until(lambda: slow._down_since is None and not slow._queue and not slow._drains)
        assert direct.hget(gauge, "l") == b"2"  # two free: b is still in flight (a's slot given back once, not twice)
        statuses = []
        for _ in range(3):
            try:
                statuses.append((await limiter.reserve(k, "m", "chat", head, b"{}")).metered)
            except GatewayError as exc:
                statuses.append(exc.status)
        assert statuses == [True, True, 429]  # limit 3, b among them
    finally:
        await slow.aclose()
        direct.close()


ISOLATED_URL = "redis://127.0.0.1:6379/12"  # a database no other test writes to


@pytest.fixture
async def isolated_store():
    """A store of this test's own prefix in ISOLATED_URL; its keys are deleted afterwards."""
    prefix = unique_prefix()
    s = RedisBuckets(ISOLATED_URL, prefix, Metrics(), leasing=True)
    yield s
    await s.aclose()
    cleanup = redis.Redis.from_url(ISOLATED_URL)
    for key in cleanup.scan_iter(match=f"{{{prefix}}}:*", count=1000):
        cleanup.delete(key)
    cleanup.close()


async def test_a_request_cancelled_as_redis_grants_its_slot_gives_the_slot_back(isolated_store):
    """The client leaves (the watchdog cancels the request's task) in the loop turn after Redis
    answered: the reservation's result is set, and the task resumes with CancelledError
    instead. No lease came back, so nothing settled, and the slot stayed taken in Redis for
    the gauge's hour: the key was locked out."""
    store = isolated_store
    cfg = config_mod.loads(redis_limited("[{concurrent: 1}]"))
    limiter, k, head = Limiter(cfg, store, Metrics()), cfg.keys[0], RequestHead(model="m", max_tokens=5)
    gauge = store.key("key:k:concurrent:inflight")
    sent = store._run
    victims: list[asyncio.Task[None]] = []

    async def answered_then_client_leaves(batch):
        ok = await sent(batch)  # the reservation's future has its result ...
        for task in victims:
            task.cancel()  # ... and the watchdog cancels before the request's task resumes
        return ok

    async def request() -> None:
        lease = await limiter.reserve(k, "m", "chat", head, b"{}")
        limiter.settle(lease, Usage(), "m")  # (not reached)

    store._run = answered_then_client_leaves
    victims.append(asyncio.get_running_loop().create_task(request()))
    with pytest.raises(asyncio.CancelledError):
        await victims[0]
    store._run = sent
    direct = redis.Redis.from_url(ISOLATED_URL)
    try:
        await until(lambda: direct.hget(gauge, "l") == b"1")  # the slot is given back
        assert (await limiter.reserve(k, "m", "chat", head, b"{}")).metered
    finally:
        direct.close()


async def test_a_refused_reservation_does_not_renew_a_gauges_expiry(store):
    """A gauge expires an hour after its last use (slots of a gateway that died come back);
    refusals rewrote it and renewed that hour, so retries of a locked-out key kept it locked."""
    plan = plan_of(Bucket("key:k:concurrent:inflight", "key", "k", "concurrent", 1, 0))
    assert (await store.take(store.bind(plan), (1.0,)))[0]
    r = redis.Redis.from_url(SHARED_URL)
    r.pexpire(store.key("key:k:concurrent:inflight"), 5000)
    assert not (await store.take(store.bind(plan), (1.0,)))[0]
    assert 0 < r.pttl(store.key("key:k:concurrent:inflight")) <= 5000
    r.close()


async def test_a_gauge_keeps_its_requests_in_flight_when_its_limit_changes(store):
    """A gauge's level is its free slots and never refills: a limit raised by a reload kept the
    free count (1 of 3 free with nothing in flight). Gateways at different limits (mid-rollout)
    must count the same requests in flight, too."""
    small, big = (Bucket("key:k:concurrent:inflight", "key", "k", "concurrent", c, 0) for c in (1.0, 3.0))
    assert (await store.take(store.bind(plan_of(small)), (1.0,)))[0]  # one in flight, limit 1
    assert (await store.levels(LimitPolicyStub([big])))[big.id] == 2
    assert [(await store.take(store.bind(plan_of(big)), (1.0,)))[0] for _ in range(3)] == [True, True, False]
    assert not (await store.take(store.bind(plan_of(small)), (1.0,)))[0]  # three in flight, limit 1
    store.charge(store.bind(plan_of(small)), (-1.0,))  # one ends, settled by a gateway at limit 1
    await until(lambda: not store._queue and not store._drains)
    assert (await store.levels(LimitPolicyStub([big])))[big.id] == 1  # two still in flight


async def test_a_batch_that_reaches_redis_after_it_was_asked_about_changes_nothing(store):
    """After a lost reply the store asks whether the batch ran; a batch still on its way (a slow
    network) must not run after the answer 'no', or its settles (sent again) would apply twice."""
    from tollway.gateway.limits.redis_store import GAUGE_TTL_MS, _Op

    bucket = Bucket("key:k:requests:3600s", "key", "k", "requests", 10, 3600)
    store.now = 5000.0
    _, keys, shapes, _ = store.bind(plan_of(bucket))
    late = store._encode([_Op("c", keys, shapes, (4.0,))], 1)
    question = ([store._record], ["5000.0", str(GAUGE_TTL_MS), "", "?", "1"])
    assert await store._evalsha(*question) == b"N"  # it had not run, and now never will
    assert await store._evalsha(*late) == b"F"
    assert await store._evalsha(*question) == b"N"  # (the same answer if asked again)
    assert (await store.levels(LimitPolicyStub([bucket])))[bucket.id] == 10  # nothing charged
    ran = store._encode([_Op("c", keys, shapes, (4.0,))], 2)
    assert await store._evalsha(*ran) == b""
    assert (await store._evalsha([store._record], ["5000.0", str(GAUGE_TTL_MS), "", "?", "2"])).split() == [b"R"]
    assert (await store.levels(LimitPolicyStub([bucket])))[bucket.id] == 6


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
async def test_an_amount_that_is_not_a_number_fails_nothing_else_in_its_batch(store, bad):
    """A NaN amount (a NaN price reserved a NaN cost) made the script fail half-way: every
    decision batched with it failed (an outage for all keys), and the bucket kept a NaN level
    written before the error. Now such an op changes nothing; the rest of the batch runs."""
    cost = Bucket("key:k:cost_usd:3600s", "key", "k", "cost_usd", 10, 3600)
    other = Bucket("key:other:requests:3600s", "key", "other", "requests", 10, 3600)
    store.now = 5000.0
    store.charge(store.bind(plan_of(cost)), (bad,))
    odd, fine = await asyncio.gather(store.take(store.bind(plan_of(cost)), (bad,)),
                                     store.take(store.bind(plan_of(other)), (1.0,)))
    assert odd == (False, (10.0,)) and fine == (True, (9.0,))
    assert store._down_since is None
    r = redis.Redis.from_url(SHARED_URL)
    assert not r.exists(store.key(cost.id))  # nothing written for it
    r.close()
    assert await store.take(store.bind(plan_of(cost)), (0.5,)) == (True, (9.5,))


def _leasing_limiter(private_redis, concurrent: int):  # noqa: ANN001, ANN202 - a test helper
    """A leasing Redis store with a `concurrent` limit on key k, its limiter, a `reserve()` for
    one request of k, and a plain client to read Redis with."""
    cfg = config_mod.loads(redis_limited(f"[{{concurrent: {concurrent}}}]"))
    store = RedisBuckets(private_redis.url, unique_prefix(), Metrics(), leasing=True)
    limiter = Limiter(cfg, store, Metrics())
    key, head = cfg.keys[0], RequestHead(model="m", max_tokens=5)
    return store, limiter, lambda: limiter.reserve(key, "m", "chat", head, b"{}"), redis.Redis(port=private_redis.port)


async def test_a_settle_after_the_store_closed_lands_and_leaves_no_connection_open(private_redis):
    """A reload that changes redis_url (a rotated password) or key_prefix closes the old store
    while requests it admitted still run: their settles come after. They must still land (the
    slot goes back), but the closed client reopened a connection for them that nothing closed:
    one more connection to Redis for the life of the process, per such reload."""
    store, limiter, reserve, probe = _leasing_limiter(private_redis, 1)
    try:
        lease = await reserve()
        assert lease is not None and lease.metered
        await store.aclose()  # the reload retired the store
        limiter.settle(lease, Usage(), "m")  # the request admitted before it ends now
        gauge = store.key("key:k:concurrent:inflight")
        await until(lambda: probe.hget(gauge, "l") == b"1")  # the slot went back
        await until(lambda: len(probe.client_list()) == 1)  # only the probe's own connection
    finally:
        probe.close()


async def test_a_retired_stores_failing_close_leaves_its_later_settles_a_drain(private_redis, monkeypatch):
    """Closing the retired store's reopened connection can fail (redis-py's disconnect may time
    out): the drain must still give its slot back, or every later settle waits for ever."""
    store, limiter, reserve, probe = _leasing_limiter(private_redis, 2)
    try:
        first, second = await reserve(), await reserve()
        assert first is not None and second is not None
        await store.aclose()  # the reload retired the store

        async def failing_close() -> None:
            raise TimeoutError("disconnect timed out")

        monkeypatch.setattr(store.client, "aclose", failing_close)
        gauge = store.key("key:k:concurrent:inflight")
        limiter.settle(first, Usage(), "m")
        await until(lambda: probe.hget(gauge, "l") == b"1")  # one slot back
        limiter.settle(second, Usage(), "m")  # its drain's close failed: a new drain must start
        await until(lambda: probe.hget(gauge, "l") == b"2")  # and the other: both free again
    finally:
        probe.close()


async def test_settles_dropped_in_a_long_outage_never_drop_a_waiting_reservation(private_redis, monkeypatch):
    """Past MAX_HELD settles held in an incident, the oldest op queued was dropped, whatever it
    was: a reservation queued while Redis was being tried again, its request waiting on it, was
    never answered (the request hung until its client gave up)."""
    monkeypatch.setattr(redis_store, "MAX_HELD", 3)
    store = RedisBuckets(private_redis.url, unique_prefix(), Metrics())
    plan = plan_of(Bucket("x", "key", "k", "requests", 100, 60))
    entry = store.bind(plan)
    assert private_redis.proc is not None
    try:
        assert (await store.take(entry, (1.0,)))[0]
        os.kill(private_redis.proc.pid, signal.SIGSTOP)  # Redis hangs: calls time out
        with pytest.raises(StoreUnavailable):
            await store.take(entry, (1.0,))  # the incident starts
        await asyncio.sleep(redis_store.RETRY_INTERVAL + 0.1)  # Redis is being tried again (0.5 s)
        waiting = asyncio.ensure_future(store.take(entry, (1.0,)))
        await asyncio.sleep(0)  # queued behind the attempt
        for _ in range(5):  # settles of requests admitted before the outage
            store.charge(entry, (-1.0,))
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(waiting, 3)
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
        await store.aclose()


async def test_a_settle_while_a_retired_store_closes_its_connection_is_not_cut_off(store, slow_redis, caplog):
    """A reload retired the store: `aclose` sent what was queued with a drain of its own, outside
    the store's drain slot, then closed the connection. A request admitted before the reload
    that settled meanwhile started a drain beside it, whose call the close cut off mid-way: the
    retired store logged Redis as unavailable (it was not), and the settle's slot came back only
    after the retry interval. The close must wait for the drain slot, as late settles' closes do."""
    limiter, slow = slow_limiter(slow_redis, store.prefix, "[{concurrent: 2}]")
    k, head = config_mod.loads(redis_limited("[{concurrent: 2}]")).keys[0], RequestHead(model="m", max_tokens=5)
    gauge = store.key("key:k:concurrent:inflight")
    direct = redis.Redis.from_url(SHARED_URL)
    real_close = slow.client.aclose
    closing, resume = asyncio.Event(), asyncio.Event()

    async def slow_close() -> None:  # redis-py's disconnect waits for its sockets to close
        closing.set()
        await resume.wait()
        await real_close()

    try:
        first, second = await limiter.reserve(k, "m", "chat", head, b"{}"), await limiter.reserve(k, "m", "chat", head, b"{}")
        assert first.metered and second.metered and direct.hget(gauge, "l") == b"0"
        slow.client.aclose = slow_close
        slow_redis.delay = 0.3  # Redis answers, slowly (within the socket timeout)
        limiter.settle(first, Usage(), "m")  # queued as the reload retires the store
        closed = asyncio.ensure_future(slow.aclose())
        await asyncio.wait_for(closing.wait(), 5)  # first's settle sent; the connection is being closed
        limiter.settle(second, Usage(), "m")  # a request admitted before the reload ends now
        await asyncio.sleep(0.1)  # (its drain, if one started, has its call in flight)
        resume.set()
        await asyncio.wait_for(closed, 5)
        await until(lambda: direct.hget(gauge, "l") == b"2")  # both slots back
        assert not [r for r in caplog.records if "redis unavailable" in r.getMessage()], "Redis never failed"
        assert slow._down_since is None
    finally:
        resume.set()
        direct.close()

"""The Redis cache: entries shared by two gateway processes, one upstream call for identical
misses across them (the fill lock, also on its own), and an outage that only ever makes
misses (docs/cache.md)."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis

from tests.cache_fixture import CacheUpstream, cache_config, prompt
from tests.fakes.openai_upstream import REPLY
from tests.harness import TEST_KEY, GatewayProcess, free_port
from tests.test_cache_e2e import _metric, chat
from tollway.core.cache.entry import Entry
from tollway.ext.usage import Usage
from tollway.gateway.cache.redis_backend import RedisBackend

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def up() -> Iterator[CacheUpstream]:
    fake = CacheUpstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    """This module's own key prefix in the shared Redis, and every key under it gone after."""
    name = f"tollway-test-cache-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def pair(up: CacheUpstream, prefix: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    config = cache_config(up.url, cache=f'{{backend: redis, redis_url: "{REDIS_URL}", key_prefix: {prefix}}}')
    first = GatewayProcess(config)
    try:
        second = GatewayProcess(config)
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


def test_an_entry_filled_by_one_gateway_is_a_hit_on_the_other(pair, up, prefix):
    a, b = map(client, pair)
    text = prompt()
    assert chat(a, text, stream=True)[:2] == (REPLY, "miss")
    store = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 10
    # The write is queued off the request path: wait until it landed (asking b before that
    # would be a miss of its own, and a second upstream call).
    while not [k for k in store.scan_iter(f"{prefix}:*") if b":lock:" not in k]:  # an entry, not a's fill lock
        assert time.monotonic() < deadline, "gateway a never stored the entry"
        time.sleep(0.02)
    answer, outcome, headers = chat(b, text)
    assert (answer, outcome) == (REPLY, "hit") and int(headers["age"]) >= 0
    assert up.calls(text) == 1
    stored = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{prefix}:*"))
    assert stored and all(len(k.split(b":")[-1]) == 64 for k in stored)  # entries only: no lock is left behind


def test_identical_misses_on_both_gateways_make_one_upstream_call(pair, up):
    clients = [client(gw) for gw in pair]
    text = prompt()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: chat(clients[i % 2], text, model="slow"), range(20)))
    assert all(answer == REPLY for answer, _, _ in results)
    assert up.calls(text) == 1
    assert sorted(outcome for _, outcome, _ in results) == ["hit"] * 19 + ["miss"]


def test_with_redis_down_every_request_is_a_miss_and_none_fails(up):
    gw = GatewayProcess(cache_config(up.url, cache=f'{{backend: redis, redis_url: "redis://127.0.0.1:{free_port()}/0"}}'))
    try:
        c = client(gw)
        text = prompt()
        outcomes = [chat(c, text, stream=i % 2 == 1)[:2] for i in range(4)]
        assert outcomes == [(REPLY, "miss")] * 4
        assert up.calls(text) == 4
        assert _metric(gw, "tollway_cache_store_errors") >= 1
        logged = [line for line in gw.stderr().splitlines() if "redis unavailable" in line]
        assert len(logged) == 1  # once per incident, not once per request
        assert "redis" in logged[0] and '"level": "error"' in logged[0]
    finally:
        gw.stop()


def _entry(text: str) -> Entry:
    return Entry("chat", json.dumps({"text": text}).encode(), 1.0, Usage(1, 2, 3), "m")


async def test_a_fill_lock_is_given_back_only_by_its_holder(prefix):
    a, b = RedisBackend(REDIS_URL, prefix), RedisBackend(REDIS_URL, prefix)
    try:
        assert (await a.claim_fresh("k1", ttl=5))[0] is True
        assert (await b.claim_fresh("k1", ttl=5))[0] is False  # a holds it
        waiting = asyncio.ensure_future(b.await_fill("k1", wait=5))
        a.fill("k1", _entry("one"), ttl=60, claimed=True)
        assert await waiting == _entry("one")  # b got a's entry when it landed
        assert (await b.claim_fresh("k1", ttl=5))[0] is True  # and the lock went with it
        b.fill("k1", None, ttl=60, claimed=True)
        # a lock that outlived its ttl may be someone else's by the time its old holder gives it back
        assert (await a.claim_fresh("k2", ttl=0.05))[0] is True
        await asyncio.sleep(0.1)
        assert (await b.claim_fresh("k2", ttl=5))[0] is True
        a.fill("k2", None, ttl=60, claimed=True)
        await asyncio.sleep(0.1)
        assert (await a.claim_fresh("k2", ttl=5))[0] is False  # b's lock is still there
        assert a.errors == b.errors == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_claim_sees_an_entry_stored_since_the_read_in_the_same_round_trip(prefix):
    """The race a fill lock alone misses: b reads (nothing), a stores and lets go, b's claim then
    finds the lock free. claim_fresh hands b the entry with the lock, so it need not call upstream."""
    a, b = RedisBackend(REDIS_URL, prefix), RedisBackend(REDIS_URL, prefix)
    try:
        assert await b.get("k3") is None  # b's read: a miss
        assert (await a.claim_fresh("k3", ttl=5))[0] is True
        a.fill("k3", _entry("three"), ttl=60, claimed=True)
        await _written(a)
        assert await b.claim_fresh("k3", ttl=5) == (True, _entry("three"))
        b.fill("k3", None, ttl=5, claimed=True)  # what the cache does with it: the lock given back
        await _written(b)
        assert await a.claim_fresh("k3", ttl=5) == (True, _entry("three"))
        assert await b.claim_fresh("k4", ttl=5) == (True, None)  # nothing stored: the lock alone
        assert await a.claim_fresh("k4", ttl=5) == (False, None)
        assert a.errors == b.errors == 0
    finally:
        await a.aclose()
        await b.aclose()


async def _written(store: RedisBackend) -> None:
    """Wait for the store's queued writes (they run off the request path)."""
    if store._pending:
        await asyncio.wait(list(store._pending))


async def test_a_streams_entry_is_replaced_by_its_answer_or_deleted(prefix):
    """The first read of a stream's entry assembles it: the answer takes its place for the time
    it has left (only while the entry is there), or an incomplete stream's entry goes (only that
    entry: one written since, by a no-cache refresh, stays)."""
    store = RedisBackend(REDIS_URL, prefix)
    raw = Entry("chat", b"data: [DONE]\n\n", 1.0, Usage(1, 2, 3), "m", sse=True)
    try:
        store.fill("k1", raw, ttl=60, claimed=False)
        await _written(store)
        assert await store.get("k1") == raw
        store.settle("k1", raw, _entry("answer"), ttl=30)
        await _written(store)
        assert await store.get("k1") == _entry("answer")
        assert 0 < await store.client.pttl(f"{prefix}:k1") <= 30_000
        store.settle("k1", raw, None, ttl=30)  # a stale read's verdict: the entry there now is not that stream
        await _written(store)
        assert await store.get("k1") == _entry("answer")
        store.fill("k3", raw, ttl=60, claimed=False)
        await _written(store)
        store.settle("k3", raw, None, ttl=30)  # the stream proved no answer: its entry goes
        await _written(store)
        assert await store.get("k3") is None
        store.settle("k2", raw, _entry("late"), ttl=30)  # (gone meanwhile: not written back)
        await _written(store)
        assert await store.get("k2") is None and store.errors == 0
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_a_miss_and_a_free_lock(caplog):
    down = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", "x")
    try:
        with caplog.at_level(logging.ERROR, logger="tollway"):
            assert await down.get("k") is None
            assert (await down.claim_fresh("k", ttl=5))[0] is True  # nobody can say otherwise: call upstream
            assert await down.await_fill("k", wait=1) is None
            down.fill("k", _entry("x"), ttl=60, claimed=True)
        assert down.errors == 1  # then left alone for RETRY_INTERVAL
        assert len([r for r in caplog.records if "redis unavailable" in r.getMessage()]) == 1
    finally:
        await down.aclose()

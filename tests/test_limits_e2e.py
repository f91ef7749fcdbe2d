"""Limits end to end: real `tollway serve` processes, the fake OpenAI upstream, real Redis,
and the official openai SDK."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import httpx2 as httpx  # the HTTP client under the openai SDK
import openai
import pytest
import redis

from tests.harness import ADMIN_KEY, ROOT, TEST_KEY, GatewayProcess, key_hash
from tests.test_limits_redis import PrivateRedis
from tollway.gateway.limits.lease import LEASE_FRACTION, MAX_HOLD_SLICES

SHARED_URL = "redis://127.0.0.1:6379/0"


def limited_config(upstream_url: str, limits: str, rate_limits: str = "", upstream_model: str = "") -> str:
    target = f"{{provider: up, model: {upstream_model}}}" if upstream_model else "{provider: up}"
    return f"""
providers:
  - name: up
    schema: openai
    base_url: {upstream_url}
    api_key: sk-upstream
models:
  - name: gpt-4o-mini
    targets: [{target}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
keys:
  - name: app
    key_hash: "{key_hash(TEST_KEY)}"
    limits: {limits}
{rate_limits}
"""


@pytest.fixture
def prefix():
    """A Redis key prefix of this test's own, deleted afterwards."""
    value = f"tollway-e2e-{os.getpid()}-{random.getrandbits(40):x}"
    yield value
    r = redis.Redis.from_url(SHARED_URL)
    for key in r.scan_iter(match=f"{{{value}}}:*", count=1000):
        r.delete(key)
    r.close()


def admin_usage(gw: GatewayProcess) -> dict:
    req = urllib.request.Request(gw.url + "/admin/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_sdk_waits_out_a_429_and_succeeds(openai_upstream):
    # One request per 2 s: the 429's retry-after is 2 s less the time since the first request
    # was admitted, so what the test checks against is the wait the gateway sent, not a window
    # of wall-clock time that a slow client (a loaded machine, a long GC pause in this process)
    # would shrink or close.
    gw = GatewayProcess(limited_config(openai_upstream.url, "[{requests: 1, per: 2s}, {total_tokens: 100000, per: 1m}]"))
    attempts: list[tuple[str, float, int, str | None]] = []  # (event, monotonic time, status, retry-after-ms)

    def on_request(request: httpx.Request) -> None:
        attempts.append(("request", time.monotonic(), 0, None))

    def on_response(response: httpx.Response) -> None:
        attempts.append(("response", time.monotonic(), response.status_code, response.headers.get("retry-after-ms")))

    http_client = httpx.Client(event_hooks={"request": [on_request], "response": [on_response]})
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=3, http_client=http_client)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
        assert raw.headers["x-ratelimit-limit-requests"] == "1"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 100000
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        raw.parse()

        del attempts[:]
        second = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert second.choices[0].message.content
        # One 429, then the retry got through: the wait the gateway quoted was long enough.
        assert [(event, status) for event, _, status, _ in attempts] == [
            ("request", 0), ("response", 429), ("request", 0), ("response", 200)], attempts
        retry_after = int(attempts[1][3] or 0) / 1000
        # Above a second unless this process took a second between two requests: long enough
        # to tell from the SDK's own backoff (0.5 s at most, before its first retry).
        assert 1.0 < retry_after <= 2.0, attempts
        slept = attempts[2][1] - attempts[1][1]  # from the 429 to the retry
        assert retry_after <= slept < retry_after + 1.0, f"retry-after {retry_after} s, the SDK waited {slept:.3f} s"

        no_retry = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, http_client=http_client)
        with pytest.raises(openai.RateLimitError) as err:
            no_retry.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert err.value.code == "rate_limit_exceeded"
        assert 0 < int(err.value.response.headers["retry-after-ms"]) <= 2000
    finally:
        http_client.close()
        gw.stop()


ISOLATED_URL = "redis://127.0.0.1:6379/12"  # a database no other test writes to


@pytest.fixture
def isolated_prefix():
    """A key prefix of this test's own in ISOLATED_URL; its keys are deleted afterwards."""
    value = f"tollway-e2e-{os.getpid()}-{random.getrandbits(40):x}"
    yield value
    r = redis.Redis.from_url(ISOLATED_URL)
    for key in r.scan_iter(match=f"{{{value}}}:*", count=1000):
        r.delete(key)
    r.close()


def reload_config(gw: GatewayProcess, text: str) -> None:
    """Write the gateway's config, SIGHUP it and wait until it says it reloaded."""
    before = gw.stderr().count("config reloaded")
    gw.config_path.write_text(text)
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gw.stderr().count("config reloaded") == before:
        assert time.monotonic() < deadline, gw.stderr()
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_concurrent_limit_changed_by_a_reload_admits_the_new_limit_at_once(openai_upstream, isolated_prefix, backend):
    """A gauge's level is its free slots and never refills. A reload kept the level and only
    lowered it past the new limit, so a limit raised from 1 to 3 still admitted one request
    at a time on an idle key; lowered then raised, the slots lowered away were lost for good."""
    rate_limits = "" if backend == "memory" else (
        f"rate_limits: {{backend: redis, redis_url: '{ISOLATED_URL}', key_prefix: {isolated_prefix}}}")

    def config(limit: int) -> str:  # the upstream answers after 3 s: requests overlap
        return limited_config(openai_upstream.url, f"[{{concurrent: {limit}}}]", rate_limits, "slow-first-byte")

    gw = GatewayProcess(config(2))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)

    def ask(_: int = 0) -> str:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5)
            return "ok"
        except openai.RateLimitError as exc:
            return str(exc.code)

    try:
        assert ask() == "ok"  # the gauge is in use: a level stored
        reload_config(gw, config(1))
        assert ask() == "ok"  # ... and in use at the lowered limit
        reload_config(gw, config(3))
        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(ask, range(3))) == ["ok"] * 3
    finally:
        gw.stop()


def test_budget_exhaustion_is_insufficient_quota_through_the_sdk(openai_upstream):
    # gpt-4o-mini's shipped price: $0.15 in / $0.60 out per 1M tokens; a $0.00002 budget is
    # a couple of requests' worth.
    gw = GatewayProcess(limited_config(openai_upstream.url, "[{cost_usd: 0.00002, per: 1d}]"))
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=2)
        outcomes = []
        for _ in range(6):
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=10)
                outcomes.append("ok")
            except openai.RateLimitError as exc:
                outcomes.append(exc.code)
        assert outcomes[0] == "ok" and outcomes[-1] == "insufficient_quota"
        spent = admin_usage(gw)["keys"]["app"][0]
        assert spent["measure"] == "cost_usd" and spent["used"] > 0
    finally:
        gw.stop()


def test_memory_backend_refuses_several_workers(openai_upstream, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(limited_config(openai_upstream.url, "[{requests: 5, per: 1m}]"))
    result = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "serve", "--config", str(path), "--workers", "2",
                             "--port", "9"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "refusing to start" in result.stderr and "2x every limit" in result.stderr and "backend: redis" in result.stderr


def test_two_gateways_share_limits_through_redis(openai_upstream, prefix):
    text = limited_config(openai_upstream.url, "[{requests: 10, per: 1h}]",
                          f"rate_limits: {{backend: redis, redis_url: '{SHARED_URL}', key_prefix: {prefix}}}")
    a, b = GatewayProcess(text), GatewayProcess(text)
    try:
        statuses = [post(gw, stream=False)[0] for _ in range(8) for gw in (a, b)]
        assert statuses.count(200) == 10 and statuses.count(429) == 6
        assert statuses[:10] == [200] * 10
        for gw in (a, b):
            entry = admin_usage(gw)["keys"]["app"][0]
            assert entry["remaining"] < 0.1
    finally:
        a.stop()
        b.stop()


def test_two_gateways_leasing_quota_stay_within_the_documented_bound(openai_upstream, prefix):
    # 64 per hour: a slice of 64 x LEASE_FRACTION = 4 requests, so each gateway leases (10 per
    # hour, above, is too small to lease and stays exact).
    capacity = 64
    text = limited_config(openai_upstream.url, f"[{{requests: {capacity}, per: 1h}}]",
                          f"rate_limits: {{backend: redis, redis_url: '{SHARED_URL}', key_prefix: {prefix}}}")
    a, b = GatewayProcess(text), GatewayProcess(text)
    try:
        statuses = [post(gw, stream=False)[0] for _ in range(45) for gw in (a, b)]
        ok = statuses.count(200)
        held = 2 * MAX_HOLD_SLICES * capacity * LEASE_FRACTION  # N gateways x what each may hold
        assert capacity - held <= ok <= capacity + 1  # +1: the hour's refill during the test
        assert statuses[: int(capacity - held)] == [200] * int(capacity - held)
        assert statuses.count(429) == len(statuses) - ok
    finally:
        a.stop()
        b.stop()
    # Both gateways gave their leases back when they stopped: Redis holds exactly what was used.
    r = redis.Redis.from_url(SHARED_URL)
    level = float(r.hget(f"{{{prefix}}}:b:key:app:requests:3600s", "l"))
    r.close()
    assert level == pytest.approx(capacity - ok, abs=1)


def test_a_refusal_by_redis_is_a_429_while_the_gateway_holds_a_lease_on_the_bucket(openai_upstream, prefix):
    # gpt-4o-mini's first request leases a slice of the key's bucket; another replica then
    # spends what Redis has left. A request on gpt-4o (its own bucket is not leased) goes to
    # Redis, which refuses: that was a 500 (the refusal's levels counted the slice held here).
    text = limited_config(openai_upstream.url, "[{requests: 64, per: 1h}]",
                          f"rate_limits: {{backend: redis, redis_url: '{SHARED_URL}', key_prefix: {prefix}}}")
    text = text.replace("models:\n", "models:\n  - name: gpt-4o\n    targets: [{provider: up}]\n"
                                      "    limits: [{requests: 100000, per: 1h}]\n", 1)
    gw = GatewayProcess(text)
    r = redis.Redis.from_url(SHARED_URL)
    try:
        assert post(gw, stream=False)[0] == 200
        seconds, micros = r.time()
        r.hset(f"{{{prefix}}}:b:key:app:requests:3600s", mapping={"l": "0", "t": repr(seconds + micros / 1e6)})
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
        assert err.value.body["code"] == "rate_limit_exceeded"
        assert int(err.value.response.headers["retry-after"]) == 57  # Redis's empty bucket: 56.25 s per request
    finally:
        gw.stop()
        r.close()


def post(gw: GatewayProcess, stream: bool) -> tuple[int, bytes]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10, "stream": stream}
    req = urllib.request.Request(gw.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


CAPACITY = 2000.0
WINDOW = 3600.0


def test_200_concurrent_streams_on_one_key_stay_within_the_bound(openai_upstream, prefix):
    text = limited_config(openai_upstream.url, f"[{{total_tokens: {CAPACITY:.0f}, per: 1h}}, {{concurrent: 50}}]",
                          f"rate_limits: {{backend: redis, redis_url: '{SHARED_URL}', key_prefix: {prefix}}}")
    gw = GatewayProcess(text)
    try:
        start = time.monotonic()
        results = asyncio.run(stream_many(gw.url, 200))
        elapsed = time.monotonic() - start
        ok = [usage for status, usage in results if status == 200]
        limited = [status for status, _ in results if status == 429]
        assert len(ok) + len(limited) == 200 and limited and ok
        assert all(ok)  # every stream reported its usage
        used = sum(ok)
        # The documented bound (docs/limits.md): each reservation (body bytes + max_tokens)
        # bounds its usage, so admitted usage <= capacity * (1 + T / window).
        assert used <= CAPACITY * (1 + elapsed / WINDOW)
        time.sleep(0.1)  # let the last settles reach Redis
        report = {e["measure"]: e for e in admin_usage(gw)["keys"]["app"]}
        # Every settle landed exactly once: what Redis holds is what the streams reported.
        assert report["total_tokens"]["used"] == pytest.approx(used, abs=CAPACITY * elapsed / WINDOW + 1)
        assert report["concurrent"]["used"] == 0
    finally:
        gw.stop()


async def stream_many(url: str, n: int) -> list[tuple[int, int]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 10,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:
        async def one() -> tuple[int, int]:
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    return resp.status, 0
                total = 0
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        total = (json.loads(line[6:]).get("usage") or {}).get("total_tokens", total)
                return 200, total

        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 60)


def test_redis_outage_fails_closed_keeps_serving_and_recovers(openai_upstream):
    server = PrivateRedis()
    gw = None
    try:
        text = limited_config(openai_upstream.url, "[{requests: 100, per: 1h}]",
                              f"rate_limits: {{backend: redis, redis_url: '{server.url}', on_store_error: closed}}")
        gw = GatewayProcess(text)
        assert post(gw, stream=False)[0] == 200
        server.stop()
        down = [post(gw, stream=False) for _ in range(16)]
        statuses = [status for status, _ in down]
        # Quota already leased from Redis is spent first (gateway/limits/lease.py): at most
        # MAX_HOLD_SLICES slices of capacity x LEASE_FRACTION, here 12.5 requests; then closed.
        leased = statuses.count(200)
        assert leased <= MAX_HOLD_SLICES * 100 * LEASE_FRACTION
        assert statuses == [200] * leased + [503] * (16 - leased)
        assert json.loads(down[-1][1])["error"]["code"] == "rate_limit_store_unavailable"
        with urllib.request.urlopen(gw.url + "/readyz", timeout=5) as resp:
            assert resp.status == 200  # the gateway itself stays up
        server.start()
        deadline = time.monotonic() + 5
        while post(gw, stream=False)[0] != 200:
            assert time.monotonic() < deadline, "the gateway did not recover after Redis came back"
            time.sleep(0.2)
        assert gw.stderr().count("redis unavailable") == 1
        assert "answers again" in gw.stderr()
    finally:
        if gw is not None:
            gw.stop()
        server.stop()


def test_a_negative_max_tokens_is_refused_and_cannot_drain_a_shared_bucket(openai_upstream):
    # A negative cap made a negative reservation; its settle then charged the difference to
    # every bucket of the plan, model buckets other keys share included (locking them out for
    # hours). OpenAI refuses max_tokens < 1; so does the gateway, before any quota moves.
    config = limited_config(openai_upstream.url, "[{total_tokens: 100000, per: 1m}]")
    gw = GatewayProcess(config)
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        for field in ("max_tokens", "max_completion_tokens", "n"):
            with pytest.raises(openai.BadRequestError) as bad:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                               **{field: -100_000_000})
            assert bad.value.body["param"] == field
        ok = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) > 99_000  # nothing was charged for the refusals
    finally:
        gw.stop()

"""Streams stopped at their limits and budgets (`rate_limits.enforce_streams`), end to end:
real `tollway serve` processes, the fake OpenAI upstream's `long-stream` (3,000 one-token
deltas), real Redis, the official openai and anthropic SDKs."""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import openai
import pytest
import redis

from tests.fakes.anthropic_upstream import LONG_STREAM_DELTAS, USAGE, FakeAnthropic
from tests.fakes.openai_upstream import LONG_DELTA, LONG_STREAM_CHUNKS, FakeOpenAI
from tests.harness import ADMIN_KEY, GatewayProcess, key_hash
from tollway.core.accounting.pricing import dataset_price
from tollway.core.accounting.tokens import estimate_prompt_tokens
from tollway.core.config import loads
from tollway.core.limits import streams
from tollway.core.request import parse_head
from tollway.gateway.exchange import Exchange
from tollway.gateway.limits.limiter import Lease, Limiter
from tollway.gateway.limits.memory import MemoryBuckets
from tollway.gateway.limits.stream_stop import stream_stop
from tollway.gateway.telemetry.metrics import Metrics

REDIS_URL = "redis://127.0.0.1:6379/0"
OA_KEY, AN_KEY, BUDGET_KEY, CROWD_KEY, BURST_KEY = (f"sk-tollway-stream-{name}-0123456789"
                                                     for name in ("oa", "an", "budget", "crowd", "burst"))
LIMIT = 300  # output tokens per hour of the single-stream keys
BURST_LIMIT = 100  # output tokens per second: a bucket full again within a second
CROWD_LIMIT = 20_000  # output tokens per hour shared by 200 streams
PER_TOKEN_USD = 0.001  # the priced route's output price (1000 USD per million tokens)
BUDGET_USD = 0.3005  # 300 output tokens at that price, not 301
ANTHROPIC_INPUT = USAGE["input_tokens"] + USAGE["cache_creation_input_tokens"] + USAGE["cache_read_input_tokens"]


def _config(upstream_url: str, rate_limits: str = "", store: str = "") -> str:
    return f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream_url}, api_key: sk-upstream}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up, model: long-stream}}]}}
  - {{name: priced, targets: [{{provider: up, model: long-stream}}], price: {{input: 0, output: 1000}}}}
  - {{name: burst, targets: [{{provider: up, model: burst-stream}}]}}
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
keys:
  - {{name: oa, key_hash: "{key_hash(OA_KEY)}", limits: [{{output_tokens: {LIMIT}, per: 1h}}]}}
  - {{name: an, key_hash: "{key_hash(AN_KEY)}", limits: [{{total_tokens: {LIMIT * 10}, per: 1h}}, {{output_tokens: {LIMIT}, per: 1h}}]}}
  - {{name: budget, key_hash: "{key_hash(BUDGET_KEY)}", budget: {{usd: {BUDGET_USD}, period: day}}}}
  - {{name: crowd, key_hash: "{key_hash(CROWD_KEY)}", limits: [{{output_tokens: {CROWD_LIMIT}, per: 1h}}, {{concurrent: 500}}]}}
  - {{name: burst, key_hash: "{key_hash(BURST_KEY)}", limits: [{{output_tokens: {BURST_LIMIT}, per: 1s}}]}}
{rate_limits}
{store}
"""


def _redis_limits(prefix: str) -> str:
    return f"rate_limits: {{backend: redis, redis_url: '{REDIS_URL}', key_prefix: {prefix}}}"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    db = tmp_path_factory.mktemp("ledger") / "ledger.db"
    process = GatewayProcess(_config(upstream.url, store=f"store: {{backend: sqlite, path: '{db}'}}\n"
                                                         "ledger: {flush_interval: 0.05}"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def redis_gw(upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    prefix = f"tollway-streamstop-{os.getpid()}-{random.getrandbits(40):x}"
    process = GatewayProcess(_config(upstream.url, _redis_limits(prefix)))
    yield process
    process.stop()
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(match=f"{{{prefix}}}:*", count=1000):
        r.delete(key)
    r.close()


def _admin(gw: GatewayProcess, path: str) -> Any:
    req = urllib.request.Request(gw.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _used(gw: GatewayProcess, key: str, measure: str) -> float:
    return next(b["used"] for b in _admin(gw, "/admin/usage")["keys"][key] if b["measure"] == measure)


def _log_line(gw: GatewayProcess, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in gw.log_lines() if line.get("key") == key]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for key {key}")


def _ended(upstream: FakeOpenAI, before: int, count: int = 1) -> list[tuple[int, bool]]:
    """The long-stream answers after the first `before`, once `count` have ended (the fake
    notices a client that closed the connection at its next write)."""
    deadline = time.monotonic() + 5
    while len(upstream.long_streams) < before + count and time.monotonic() < deadline:
        time.sleep(0.02)
    return upstream.long_streams[before:]


def _oa_stream(gw: GatewayProcess, key: str, model: str = "gpt-4o-mini", max_tokens: int = 100) -> tuple[list[str], Any]:
    """The deltas an openai SDK stream got, and the error that ended it (None if none)."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    got: list[str] = []
    try:
        stream = client.chat.completions.create(model=model, stream=True, max_tokens=max_tokens,
                                                messages=[{"role": "user", "content": "count"}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    except openai.APIError as exc:
        return got, exc
    return got, None


def test_openai_stream_is_cut_at_its_token_limit(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    before = len(upstream.long_streams)
    got, err = _oa_stream(gw, OA_KEY)
    assert isinstance(err, openai.APIError) and err.code == "rate_limit_exceeded"
    assert err.message.startswith("The stream was stopped: Rate limit reached for gpt-4o-mini on output tokens")
    # 100 reserved by max_tokens, then extensions up to the bucket's last token, and not one more
    assert got == [LONG_DELTA] * LIMIT
    (written, hung_up), = _ended(upstream, before)
    assert hung_up and LIMIT < written < LONG_STREAM_CHUNKS  # the gateway closed the upstream connection
    line = _log_line(gw, "oa")
    assert line["error"] == "rate_limit_exceeded" and line["completion_tokens"] == LIMIT  # settled with what was sent
    assert LIMIT - 1 <= _used(gw, "oa", "output_tokens") <= LIMIT  # (less what refilled since: 300 an hour)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in _admin(gw, "/admin/requests?key=oa")["data"]]
        if records:
            break
        time.sleep(0.05)
    assert records[0]["output_tokens"] == LIMIT and records[0]["error"] == "rate_limit_exceeded"
    # the bucket is spent: the next stream is refused at admission, before any byte
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key=OA_KEY, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", stream=True, max_tokens=10, messages=[{"role": "user", "content": "more"}])


def test_anthropic_stream_is_cut_with_its_error_event(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=AN_KEY, max_retries=0, timeout=20)
    before = len(upstream.long_streams)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="gpt-4o-mini", max_tokens=50,
                                    messages=[{"role": "user", "content": "count"}]) as stream:
            for text in stream.text_stream:
                got.append(text)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "The stream was stopped: Rate limit reached for gpt-4o-mini on output tokens" in body["error"]["message"]
    assert "".join(got) == LONG_DELTA * LIMIT
    assert [hung_up for _, hung_up in _ended(upstream, before)] == [True]
    line = _log_line(gw, "an")
    assert line["error"] == "rate_limit_exceeded" and line["completion_tokens"] == LIMIT
    assert LIMIT - 1 <= _used(gw, "an", "output_tokens") <= LIMIT


def test_native_anthropic_stream_is_cut_and_settled_with_what_was_sent(anthropic_upstream: FakeAnthropic) -> None:
    gw = GatewayProcess(f"""
providers:
  - {{name: claude, schema: anthropic, base_url: {anthropic_upstream.url}, api_key: sk-upstream}}
models:
  - {{name: claude-long, targets: [{{provider: claude, model: long-stream}}]}}
keys:
  - {{name: an, key_hash: "{key_hash(AN_KEY)}", limits: [{{output_tokens: {LIMIT}, per: 1h}}]}}
""")
    try:
        before = len(anthropic_upstream.long_streams)
        client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=AN_KEY, max_retries=0, timeout=20)
        got: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as info:
            with client.messages.stream(model="claude-long", max_tokens=64,
                                        messages=[{"role": "user", "content": "count"}]) as stream:
                for text in stream.text_stream:
                    got.append(text)
        assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert "".join(got) == LONG_DELTA * LIMIT
        deadline = time.monotonic() + 5
        while len(anthropic_upstream.long_streams) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        (written, hung_up), = anthropic_upstream.long_streams[before:]
        assert hung_up and written < LONG_STREAM_DELTAS
        line = _log_line(gw, "an")
        # the prompt as the upstream's message_start reported it; the output that was sent
        assert (line["prompt_tokens"], line["completion_tokens"]) == (ANTHROPIC_INPUT, LIMIT)
    finally:
        gw.stop()


def test_a_stream_is_cut_when_its_calendar_budget_runs_out(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    before = len(upstream.long_streams)
    got, err = _oa_stream(gw, BUDGET_KEY, model="priced", max_tokens=2000)
    assert isinstance(err, openai.APIError) and err.code == "insufficient_quota"
    assert "The stream was stopped: The key 'budget' has spent its budget of 0.3005 USD" in err.message
    assert len(got) == 300  # 0.300 USD; the 301st token would cost 0.301
    assert [hung_up for _, hung_up in _ended(upstream, before)] == [True]
    line = _log_line(gw, "budget")
    assert line["completion_tokens"] == 300 and line["cost_usd"] == pytest.approx(300 * PER_TOKEN_USD)
    (status,) = [b for b in _admin(gw, "/admin/budgets")["data"] if b.get("key") == "budget"]
    assert status["spent_usd"] == pytest.approx(300 * PER_TOKEN_USD)  # charged what was sent; nothing held
    again, err = _oa_stream(gw, BUDGET_KEY, model="priced")  # 0.0005 USD left: admitted, not one token fits
    assert again == [] and isinstance(err, openai.APIError) and err.code == "insufficient_quota"
    assert [hung_up for _, hung_up in _ended(upstream, before, 2)] == [True, True]


def test_enforce_streams_false_leaves_streams_alone(upstream: FakeOpenAI) -> None:
    gw = GatewayProcess(_config(upstream.url, "rate_limits: {enforce_streams: false}"))
    try:
        before = len(upstream.long_streams)
        got, err = _oa_stream(gw, OA_KEY)
        assert err is None and len(got) == LONG_STREAM_CHUNKS  # charged when it ends, as before
        assert _ended(upstream, before) == [(LONG_STREAM_CHUNKS, False)]
        assert _log_line(gw, "oa")["completion_tokens"] == LONG_STREAM_CHUNKS
        assert _used(gw, "oa", "output_tokens") >= LONG_STREAM_CHUNKS - 1  # in debt: refused until refilled
    finally:
        gw.stop()


def test_redis_backend_cuts_a_stream_at_its_limit(redis_gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    before = len(upstream.long_streams)
    got, err = _oa_stream(redis_gw, OA_KEY)
    assert isinstance(err, openai.APIError) and err.code == "rate_limit_exceeded"
    # Redis is asked for a step of output at a time (37 tokens here: 1/8 of the bucket), never
    # per chunk: the stream stops when its next step no longer fits, at most one step short
    step = LIMIT // 8
    assert set(got) == {LONG_DELTA} and LIMIT - step < len(got) <= LIMIT
    assert [hung_up for _, hung_up in _ended(upstream, before)] == [True]
    assert _log_line(redis_gw, "oa")["completion_tokens"] == len(got)
    assert len(got) - 1 <= _used(redis_gw, "oa", "output_tokens") <= len(got)


async def _crowd(gw: GatewayProcess, streams: int) -> list[tuple[int, str | None]]:
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=CROWD_KEY, max_retries=0, timeout=30)

    async def one() -> tuple[int, str | None]:
        got = 0
        try:
            stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True, max_tokens=20,
                                                          messages=[{"role": "user", "content": "count"}])
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got += 1
        except openai.APIError as exc:
            return got, exc.code
        return got, None

    try:
        return await asyncio.gather(*(one() for _ in range(streams)))
    finally:
        await client.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_200_concurrent_streams_on_one_key_stay_within_the_bound(backend: str, gw: GatewayProcess,
                                                                 redis_gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    gateway = gw if backend == "memory" else redis_gw
    before = len(upstream.long_streams)
    start = time.monotonic()
    results = asyncio.run(_crowd(gateway, 200))
    elapsed = time.monotonic() - start
    sent = sum(got for got, _ in results)
    refill = CROWD_LIMIT / 3600 * elapsed
    # The documented bound (docs/limits.md, "Streams"): every token sent was reserved or taken
    # from the bucket before its chunk went out, so together they stay within the bucket and
    # what it refilled meanwhile; the bucket ends up used, not left idle by early stops.
    assert sent <= CROWD_LIMIT + refill
    assert sent >= CROWD_LIMIT * 0.97
    assert {code for _, code in results} == {"rate_limit_exceeded"}  # every one was cut, none failed otherwise
    used = _used(gateway, "crowd", "output_tokens")
    assert sent - 1 - refill <= used <= sent + 1  # settled with what was sent
    ended = _ended(upstream, before, 200)
    assert len(ended) == 200 and all(hung_up for _, hung_up in ended)  # every upstream connection closed


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_chunk_larger_than_the_whole_bucket_stops_the_stream_even_from_a_full_bucket(
        backend: str, gw: GatewayProcess, redis_gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    """An extension is taken whole or not at all, never capped at a bucket's capacity as an
    admission's reservation is: the chunk that needs more than the whole bucket is held back
    and the stream stopped. (Capped, it took the full bucket's 100 while the stream counted
    the ~1,100 it asked for: the 301-token chunk went out, and the settle refunded the bucket.)"""
    gateway = gw if backend == "memory" else redis_gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=BURST_KEY, max_retries=0, timeout=20)
    got: list[str] = []
    err: openai.APIError | None = None
    try:  # no max_tokens: the default 4096 is reserved capped at the bucket's 100, the whole bucket
        for chunk in client.chat.completions.create(model="burst", stream=True,
                                                    messages=[{"role": "user", "content": "go"}]):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
                if len(got) == 1:  # "Hi" went out; the burst comes once the bucket is full again
                    deadline = time.monotonic() + 5
                    while _used(gateway, "burst", "output_tokens") > 0 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert _used(gateway, "burst", "output_tokens") == 0
                    upstream.burst_release.set()
    except openai.APIError as exc:
        err = exc
    assert got == ["Hi"], f"{len(''.join(got))} characters went out on a {BURST_LIMIT}-token bucket"
    assert isinstance(err, openai.APIError) and err.code == "rate_limit_exceeded"
    assert err.message.startswith("The stream was stopped: Rate limit reached for burst on output tokens per 1s")
    line = _log_line(gateway, "burst")
    assert line["error"] == "rate_limit_exceeded" and line["completion_tokens"] == 1  # settled with what was sent
    assert [r for r in upstream.requests if r["body"]["model"] == "burst-stream"], "the fake's burst-stream served it"

def test_no_limit_installs_no_hook() -> None:
    """A request with no token, cost or budget to pass gets no per-chunk hook at all."""
    config = loads(_config("http://127.0.0.1:9/v1").replace("output_tokens: 300", "requests: 300"))
    limiter = Limiter(config, MemoryBuckets(), Metrics())
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
    head = parse_head(body, 64)
    keys = {k.name: k for k in config.keys}
    ex = Exchange("req_1", "chat")

    async def hooks() -> None:  # (a hook made on the event loop, as the gateway makes it)
        lease = limiter.admit(keys["oa"], "gpt-4o-mini", "chat", head, body)  # a request limit only
        assert isinstance(lease, Lease) and stream_stop(ex, "gpt-4o-mini", 10, limiter, lease, None, None) is None
        assert stream_stop(ex, "gpt-4o-mini", 10, None, None, None, None) is None  # no limit at all
        lease = limiter.admit(keys["crowd"], "gpt-4o-mini", "chat", head, body)  # an output_tokens limit
        assert isinstance(lease, Lease)
        assert stream_stop(ex, "gpt-4o-mini", 10, limiter, lease, None, None) is not None

    asyncio.run(hooks())


def test_a_cost_limit_cuts_a_stream_on_an_alias_route_priced_as_served(upstream: FakeOpenAI) -> None:
    """`house` has no price of its own; it is served as gpt-4o-mini, whose dataset price its
    answers are charged at. A key's cost_usd limit stops its stream mid-way at that price (it
    used to fail the request: no bucket bounded a step), and the access log charges what was sent.
    The prompt's cost, which the admission could not reserve, is taken with the first extension,
    whole: the limit holds it and 4.5 output tokens (it once held less than the prompt bound's
    cost, and the extension was capped at the bucket's capacity instead of refused)."""
    key = "sk-tollway-stream-alias-0123456789"
    body = json.dumps({"model": "house", "stream": True, "max_tokens": 50,
                       "messages": [{"role": "user", "content": "count"}]}).encode()
    price = dataset_price("gpt-4o-mini", "openai", datetime.now(UTC).date())
    assert price is not None
    limit = streams.prompt_cost(estimate_prompt_tokens(body), price) + 4.5 * streams.output_rate(price)
    config = f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream.url}, api_key: sk-upstream}}
models:
  - {{name: house, targets: [{{provider: up, model: gpt-4o-mini}}]}}
keys:
  - {{name: house-key, key_hash: "{key_hash(key)}", limits: [{{cost_usd: {limit:.12f}, per: 1d}}]}}
"""
    gw = GatewayProcess(config)
    try:
        req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body, headers={
            "authorization": f"Bearer {key}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            events = [json.loads(line[6:]) for line in resp.read().decode().splitlines()
                      if line.startswith("data: {")]
        got = [e["choices"][0]["delta"]["content"] for e in events
               if e.get("choices") and e["choices"][0]["delta"].get("content")]
        errors = [e["error"] for e in events if "error" in e]
        assert [e["code"] for e in errors] == ["insufficient_quota"], events
        assert "The stream was stopped" in errors[0]["message"]
        assert len(got) == 4, got  # the fake's answer is 9 words, one token each: 4 fit past the prompt's cost
        line = _log_line(gw, "house-key")
        assert line["completion_tokens"] == len(got) and line["cost_usd"] > 0
    finally:
        gw.stop()

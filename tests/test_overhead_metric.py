"""tollway_gateway_overhead_seconds: a request's time in the gateway, its upstream waits excluded.

A slow upstream (0.4 s before a whole answer; a stream with 0.1 s between its chunks) makes the
request's duration large while the gateway's own share stays small: the histogram must put the
request in a bucket far below the wait, by API and provider. A request the gateway answers
itself (a 401) is all overhead, with provider "none".
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, ThreadedServer, key_hash
from tollway.gateway.telemetry.metrics import OVERHEAD_BUCKETS

WAIT = 0.4  # seconds the upstream takes per answer (spread over a stream's chunks)
PIECES = 4
USAGE = {"prompt_tokens": 5, "completion_tokens": PIECES, "total_tokens": 5 + PIECES}


class SlowUpstream:
    """Answers chat after WAIT seconds; streams PIECES deltas WAIT / PIECES apart."""

    def __init__(self) -> None:
        self.server = ThreadedServer(self._app)
        self.url = f"http://127.0.0.1:{self.server.port}/v1"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "chatcmpl-slow", "created": int(time.time()), "model": body["model"]}
        if body["model"] == "hang":  # past the gateway's first_byte timeout for it
            await asyncio.sleep(3)
        if not body.get("stream"):
            await asyncio.sleep(WAIT)
            return web.json_response({**base, "object": "chat.completion", "usage": USAGE, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(PIECES + 1):
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if i == 0 else {"content": "tick "}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": "stop" if i == PIECES else None}]}
            if i:
                await asyncio.sleep(WAIT / PIECES)
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        tail = {**base, "object": "chat.completion.chunk", "choices": [], "usage": USAGE}
        await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n")
        return resp


@pytest.fixture(scope="module")
def slow_gateway() -> Iterator[GatewayProcess]:
    upstream = SlowUpstream()
    config = f"""
providers:
  - name: slowpoke
    schema: openai
    base_url: {upstream.url}
    api_key: {UPSTREAM_SECRET}
  - name: hanging
    schema: openai
    base_url: {upstream.url}
    api_key: {UPSTREAM_SECRET}
    timeouts: {{first_byte: 0.5}}
models:
  - name: gpt-4o-mini
    targets: [{{provider: slowpoke}}]
  - name: hang
    targets: [{{provider: hanging}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    models: ["*"]
"""
    gw = GatewayProcess(config)
    yield gw
    gw.stop()
    upstream.server.stop()


def _histogram(gateway: GatewayProcess, api: str, provider: str) -> dict[str, float]:
    """The overhead histogram's samples for (api, provider): `le` -> cumulative count, and count."""
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=5) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    out: dict[str, float] = {}
    for s in families["tollway_gateway_overhead_seconds"].samples:
        if s.labels.get("api") == api and s.labels.get("provider") == provider:
            out[s.labels.get("le", s.name.rsplit("_", 1)[-1])] = s.value
    return out


def _requests_within(samples: dict[str, float], seconds: float) -> float:
    return samples[str(seconds)]


def test_overhead_leaves_out_a_slow_upstreams_wait(slow_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=slow_gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    began = time.perf_counter()
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    assert text == "tick " * PIECES and time.perf_counter() - began >= 2 * WAIT * 0.9  # the waits happened

    samples = _histogram(slow_gateway, "chat", "slowpoke")
    assert samples["count"] == 2
    # Both requests took ~0.4 s; the gateway's share of each is far below a tenth of that.
    assert _requests_within(samples, 0.025) == 2, samples
    assert samples["sum"] < 0.05, samples
    assert sorted(float(le) for le in samples if le not in ("count", "sum", "+Inf")) == list(OVERHEAD_BUCKETS)


def test_an_upstream_that_times_out_is_not_the_gateways_time(slow_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=slow_gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    began = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="hang", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 504 and time.perf_counter() - began >= 0.5
    samples = _histogram(slow_gateway, "chat", "hanging")
    assert samples["count"] == 1 and _requests_within(samples, 0.025) == 1, samples


def test_an_answer_the_gateway_gives_itself_is_all_overhead(slow_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=slow_gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    samples = _histogram(slow_gateway, "chat", "none")
    assert samples["count"] >= 1 and samples["sum"] > 0

"""Tier one -> tier two -> fake vLLM replicas: real servers on loopback, the official openai SDK.

Topology (module-scoped, started once):

    openai SDK -> tier 1 (`tollway serve`) --llama-canary, llama-3-8b--> tier 2 (`tollway serve`)
                   |  smart: priority 0 -> `broken` (a replica answering 503),      |
                   |         priority 1 -> tier 2                                   |
                                                  tier 2: llama-v1 = pool [r0, r1] (least_queue)
                                                          llama-v2 = r2 (the canary)
                                                          llama-hurt = pool [r3, r4] (r4 gets killed)
Replicas name themselves in `system_fingerprint`, which both tiers relay untouched, so the
client can count who served each answer.
"""
from __future__ import annotations

import asyncio
import math
import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.vllm_replica import FakeVLLMReplica
from tests.harness import TEST_KEY, GatewayProcess, key_hash

UPSTREAM_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
TIER2_KEY = "sk-tier2-internal-key-000111222"
CONCURRENCY = 24


def tier2_config(r: dict[str, FakeVLLMReplica]) -> str:
    return f"""
providers:
  - name: llama-v1
    schema: openai
    endpoints: ["{r['r0'].url}", "{r['r1'].origin}/openai/v1"]
    pick: least_queue
    scrape: {{interval: 0.2, timeout: 0.5}}
  - name: llama-v2
    schema: openai
    base_url: {r['r2'].url}
  - name: llama-hurt
    schema: openai
    endpoints: ["{r['r3'].url}", "{r['r4'].url}"]
    scrape: {{interval: 0.2, timeout: 0.5}}
    timeouts: {{connect: 1}}
models:
  - name: llama-canary
    targets:
      - {{provider: llama-v1, model: {UPSTREAM_MODEL}, weight: 90}}
      - {{provider: llama-v2, model: {UPSTREAM_MODEL}-v2, weight: 10}}
  - name: llama-3-8b
    targets: [{{provider: llama-v1, model: {UPSTREAM_MODEL}}}]
  - name: llama-hurt
    targets: [{{provider: llama-hurt}}]
keys:
  - name: tier1
    key_hash: "{key_hash(TIER2_KEY)}"
server: {{access_log: false}}
routing:
  outlier_detection: {{consecutive_failures: 2, cool_down: 30}}
"""


def tier1_config(tier2_url: str, broken_url: str, extra_models: str = "") -> str:
    return f"""
providers:
  - name: tier2
    schema: openai
    base_url: {tier2_url}/v1
    api_key: {TIER2_KEY}
  - name: broken
    schema: openai
    base_url: {broken_url}
models:
  - name: llama-canary
    targets: [{{provider: tier2}}]
  - name: llama-3-8b
    targets: [{{provider: tier2}}]
  - name: llama-hurt
    targets: [{{provider: tier2}}]
  - name: smart
    targets:
      - {{provider: broken, model: llama-3-8b, priority: 0}}
      - {{provider: tier2, model: llama-3-8b, priority: 1}}
{extra_models}
keys:
  - name: app
    key_hash: "{key_hash(TEST_KEY)}"
server: {{access_log: false, reload_check_interval: 0.2}}
"""


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, FakeVLLMReplica]]:
    made = {name: FakeVLLMReplica(name) for name in ("r0", "r1", "r2", "r3", "r4", "broken")}
    made["broken"].fail_status = 503
    yield made
    for r in made.values():
        if r.server.loop.is_running():
            r.kill()


@pytest.fixture(scope="module")
def tiers(replicas: dict[str, FakeVLLMReplica]) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tier2 = GatewayProcess(tier2_config(replicas))
    tier1 = GatewayProcess(tier1_config(tier2.url, replicas["broken"].url))
    yield tier1, tier2
    assert tier1.stop() == 0 and tier2.stop() == 0


def client(tier1: GatewayProcess) -> openai.AsyncOpenAI:
    # max_retries=0: any error the gateways let through must show up here, not be retried away
    return openai.AsyncOpenAI(base_url=tier1.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


async def ask_many(tier1: GatewayProcess, model: str, n: int, stream_every: int = 0) -> Counter[str]:
    """Send `n` chat requests, CONCURRENCY at a time; returns who served them. Raises on any error."""
    sdk, gate, served = client(tier1), asyncio.Semaphore(CONCURRENCY), Counter()

    async def one(i: int) -> None:
        async with gate:
            messages = [{"role": "user", "content": f"question {i}"}]
            if stream_every and i % stream_every == 0:
                stream = await sdk.chat.completions.create(model=model, messages=messages, stream=True)
                chunks = [c async for c in stream]
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "Hello from vLLM"
                served[chunks[0].system_fingerprint] += 1
            else:
                reply = await sdk.chat.completions.create(model=model, messages=messages)
                assert reply.choices[0].message.content == "Hello from vLLM"
                served[reply.system_fingerprint] += 1

    async with sdk:
        await asyncio.gather(*(one(i) for i in range(n)))
    return served


def metrics_text(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return r.read().decode()


def test_weights_hold_over_1000_requests(tiers):
    tier1, _ = tiers
    start = time.monotonic()
    served = asyncio.run(ask_many(tier1, "llama-canary", 1000, stream_every=10))
    elapsed = time.monotonic() - start
    assert sum(served.values()) == 1000
    canary = served["r2"]
    sd = math.sqrt(1000 * 0.1 * 0.9)  # binomial: 9.5 requests
    assert abs(canary - 100) < 4 * sd, f"canary got {canary} of 1000 (expected 100 +- {4 * sd:.0f})"
    assert served["r0"] + served["r1"] == 1000 - canary
    print(f"\n1000 requests through two tiers in {elapsed:.2f}s; served {dict(served)}")


def test_upstream_model_override_reaches_the_replica(replicas, tiers):
    assert UPSTREAM_MODEL in replicas["r0"].models_seen + replicas["r1"].models_seen
    assert f"{UPSTREAM_MODEL}-v2" in replicas["r2"].models_seen
    assert "llama-canary" not in replicas["r2"].models_seen


def test_busy_replica_gets_less_traffic(replicas, tiers):
    tier1, tier2 = tiers
    replicas["r0"].waiting, replicas["r0"].kv_cache = 40, 0.9
    try:
        scraped = f'tollway_pool_endpoint_waiting{{endpoint="{replicas["r0"].url}",provider="llama-v1"}} 40.0'
        _wait_for(lambda: scraped in metrics_text(tier2), "tier 2 to scrape r0's queue")
        served = asyncio.run(ask_many(tier1, "llama-3-8b", 300))
    finally:
        replicas["r0"].waiting, replicas["r0"].kv_cache = 0, 0.0
    assert served["r0"] + served["r1"] == 300
    assert served["r0"] < 15, f"the busy replica still got {served['r0']} of 300"


def test_killed_replica_is_ejected_with_no_client_error(replicas, tiers):
    tier1, tier2 = tiers
    before = asyncio.run(ask_many(tier1, "llama-hurt", 40))
    assert before["r3"] > 0 and before["r4"] > 0, before
    replicas["r4"].kill()
    served = asyncio.run(ask_many(tier1, "llama-hurt", 200))  # raises on any client-visible error
    assert served == {"r3": 200}
    text = metrics_text(tier2)
    assert f'tollway_upstream_available{{endpoint="{replicas["r4"].url}",provider="llama-hurt"}} 0.0' in text


def test_fallback_before_first_byte_is_invisible(replicas, tiers):
    tier1, _ = tiers
    tried_before = len(replicas["broken"].models_seen)
    served = asyncio.run(ask_many(tier1, "smart", 20, stream_every=2))
    assert sum(served.values()) == 20
    assert len(replicas["broken"].models_seen) > tried_before, "the primary was never tried"


def test_hot_reload_under_load_loses_no_request(replicas, tiers):
    tier1, _ = tiers
    config_path = tier1.config_path
    new_model = "  - name: llama-alias\n    targets: [{provider: tier2, model: llama-3-8b}]\n"

    async def load_and_reload() -> Counter[str]:
        work = asyncio.create_task(ask_many(tier1, "llama-3-8b", 400, stream_every=4))
        await asyncio.sleep(0.3)
        config_path.write_text(tier1_config(_tier2_url(tier1), replicas["broken"].url, "  - name: broken-yaml\n    targets: [")
                               + "\n")  # a bad file first: must be rejected, the old config keeps serving
        await asyncio.sleep(0.5)
        config_path.write_text(tier1_config(_tier2_url(tier1), replicas["broken"].url, new_model))
        os.kill(tier1.proc.pid, signal.SIGHUP)  # the main process forwards it to the worker
        return await work

    served = asyncio.run(load_and_reload())
    assert sum(served.values()) == 400
    _wait_for(lambda: _has_model(tier1, "llama-alias"), "the reloaded config to serve llama-alias")
    assert "rejected" in tier1.stderr() and "line" in tier1.stderr()
    assert 'tollway_config_reloads_total{result="rejected"} 1.0' in metrics_text(tier1)


def _tier2_url(tier1: GatewayProcess) -> str:
    text = tier1.config_path.read_text()
    return text.split("base_url: ", 1)[1].split("/v1", 1)[0]


def _has_model(tier1: GatewayProcess, name: str) -> bool:
    req = urllib.request.Request(tier1.url + "/v1/models", headers={"authorization": f"Bearer {TEST_KEY}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return f'"{name}"' in r.read().decode()


def _wait_for(check, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")

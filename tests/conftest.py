"""Shared fixtures: a fake OpenAI upstream and a real gateway in front of it."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.kernels_fixture import *  # noqa: F401,F403 - the pure/compiled kernel fixtures
from tests.slow_redis import SlowRedis


@pytest.fixture(autouse=True, scope="session")
def _price_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Gateways the tests start cache their price table in the session's temp folder, not the
    user's (tollway.gateway.price_source)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TOLLWAY_CACHE_DIR", str(tmp_path_factory.mktemp("tollway-cache")))
    yield
    mp.undo()


MISBEHAVING_MODELS = ("fail-500", "fail-429", "bad-auth", "leaky-error", "slow-first-byte",
                      "stall-stream", "die-mid-stream", "no-usage", "incomplete", "failed", "ends-early",
                      "no-done", "usage-negative", "usage-huge", "thinks-no-usage")


def standard_config(upstream_url: str, extra: str = "") -> str:
    """The config most end-to-end tests share: one OpenAI-compatible upstream, Azure, the fake."""
    base = upstream_url.removesuffix("/v1")
    misbehaving = "\n".join(f"  - name: {m}\n    targets: [{{provider: up}}]" for m in MISBEHAVING_MODELS)
    return f"""
providers:
  - name: up
    schema: openai
    base_url: {upstream_url}
    api_key: {UPSTREAM_SECRET}
    timeouts: {{connect: 2, first_byte: 1.5, idle: 1}}
  - name: azure
    schema: azure_openai
    base_url: {base}
    api_version: "2024-10-21"
    api_key: {UPSTREAM_SECRET}
  - name: local
    schema: fake
  - name: dead
    schema: openai
    base_url: http://127.0.0.1:9/v1
    api_key: {UPSTREAM_SECRET}
    timeouts: {{connect: 1}}
models:
  - name: dead-model
    targets: [{{provider: dead}}]
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
  - name: text-embedding-3-small
    targets: [{{provider: up}}]
  - name: llama-3-8b
    targets: [{{provider: up, model: meta-llama/Meta-Llama-3-8B-Instruct}}]
  - name: azure-gpt
    targets: [{{provider: azure, model: my-deployment}}]
  - name: demo
    targets: [{{provider: local}}]
{misbehaving}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    models: ["*"]
  - name: narrow-key
    key_hash: "{key_hash(OTHER_KEY)}"
    models: [gpt-4o-mini]
server:
  max_body_bytes: 1048576
{extra}
"""


@pytest.fixture(scope="session")
def openai_upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(openai_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    """One real `tollway serve` in front of the fake upstream, shared by the session."""
    gw = GatewayProcess(standard_config(openai_upstream.url))
    yield gw
    gw.stop()


# Fake providers, one per test module that asks (each module's gateway gets a fresh request log).

@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeBedrock]:
    fake = FakeBedrock()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gemini() -> Iterator[FakeGemini]:
    """The Google fake: Gemini API, Vertex AI and its OAuth token endpoint."""
    fake = FakeGemini()
    yield fake
    fake.stop()


@pytest.fixture()
def oai(gw: GatewayProcess) -> openai.OpenAI:
    """The official openai SDK against the requesting module's `gw` gateway."""
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


@pytest.fixture()
def ant(gw: GatewayProcess) -> anthropic.Anthropic:
    """The official anthropic SDK against the requesting module's `gw` gateway's Anthropic API."""
    return anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)


from tests.fakes.hostile_upstream import HostileUpstream  # noqa: E402 - kept beside the one fixture that uses it


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    """The hostile upstream (tests/fakes/hostile_upstream.py): every provider schema's paths,
    misbehaving as the upstream model name says."""
    fake = HostileUpstream()
    yield fake
    fake.stop()


@pytest.fixture
async def slow_redis() -> AsyncIterator[SlowRedis]:
    """A proxy in front of the shared Redis whose replies wait `delay` seconds (tests.slow_redis)."""
    proxy = SlowRedis()
    await proxy.start()
    yield proxy
    await proxy.stop()

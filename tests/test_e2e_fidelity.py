"""Byte-faithful relays (issue 17, "Fidelity fixes"), through the official openai SDK and raw
HTTP against a real gateway and the fake OpenAI upstream, with recorded-shape fixtures
(tests/recorded/): what the provider accepts or refuses is the provider's to say, and a client
gets the bytes the provider would have sent it."""
from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2 as httpx  # the HTTP client under the openai SDK
import openai
import pytest

from tests.fakes.openai_media import RECORDED_ERRORS
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    """Token limits on the key: every request goes through a reservation and its settle."""
    process = GatewayProcess(f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: o3-mini, targets: [{{provider: up}}]}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    limits: [{{output_tokens: 100000, per: 1m}}, {{total_tokens: 1000000, per: 1m}}]
""")
    yield process
    process.stop()


@pytest.fixture()
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


# -- validate only what the gateway must -----------------------------------------------------

@pytest.mark.parametrize("cap", [0, -1])
def test_max_tokens_below_one_reaches_openai_and_its_error_comes_back_unchanged(client, upstream, cap):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=cap)
    assert caught.value.body == RECORDED_ERRORS[f"max_tokens_{cap}"]["error"]  # OpenAI's words, not the gateway's
    assert caught.value.code == "integer_below_min_value"
    assert upstream.last("/chat/completions")["body"]["max_tokens"] == cap
    # the reservation it made was settled without harm: the key's limits still serve
    assert client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=5).choices


def test_max_tokens_on_a_reasoning_model_gets_openais_unsupported_parameter(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="o3-mini", messages=USER, max_tokens=50)
    assert caught.value.body == RECORDED_ERRORS["max_tokens_reasoning"]["error"]


def test_a_stream_with_a_negative_cap_gets_openais_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=-1, stream=True)
    assert caught.value.code == "integer_below_min_value"


def test_absurd_sizes_are_still_the_gateways_to_refuse(client, upstream):
    seen = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=-10**9)
    assert caught.value.param == "max_tokens" and len(upstream.requests) == seen


# -- no extra bytes --------------------------------------------------------------------------

def _stream_events(gw: GatewayProcess, body: dict) -> list[bytes]:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"authorization": f"Bearer {TEST_KEY}"}) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_bytes())
    return [e for e in raw.split(b"\n\n") if e]


def test_a_client_that_did_not_ask_for_usage_gets_no_usage_key_in_any_chunk(gw, upstream):
    events = _stream_events(gw, {"model": "gpt-4o-mini", "messages": USER, "stream": True})
    assert upstream.last("/chat/completions")["body"]["stream_options"] == {"include_usage": True}
    assert events[-1] == b"data: [DONE]" and len(events) > 3
    assert not any(b'"usage"' in e for e in events)
    # the rest of each chunk is the upstream's bytes (json.dumps' spacing kept, nothing re-encoded)
    first = events[0].removeprefix(b"data: ")
    assert b'"object": "chat.completion.chunk", "created": ' in first
    assert set(json.loads(first)) == {"id", "object", "created", "model", "system_fingerprint", "choices"}


def test_a_client_that_asked_for_usage_gets_every_byte(gw):
    events = _stream_events(gw, {"model": "gpt-4o-mini", "messages": USER, "stream": True,
                                 "stream_options": {"include_usage": True}})
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all("usage" in c for c in chunks)
    assert [c["usage"] is None for c in chunks] == [True] * (len(chunks) - 1) + [False]


def test_the_sdk_sees_the_same_stream(client):
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The quick brown fox jumps over the lazy dog"

"""The Anthropic client API (`/anthropic/v1/messages`): streams that fail mid-way end with
Anthropic's `event: error` (which the anthropic SDK raises on; OpenAI's bare `data:` error it
would skip, leaving a silently cut-off answer), and the pass-through forwards `anthropic-beta`
and nothing else of the client's headers. Unit tables first, then a real gateway."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import msgspec
import pytest

from tests.fakes import anthropic_upstream as fa
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tollway.core.config import Provider
from tollway.core.errors import GatewayError, upstream_timeout
from tollway.core.providers.base import CallContext, ClientAPI
from tollway.core.providers.messages.errors import error_body
from tollway.core.providers.messages.native import AnthropicNative, AnthropicStreamRelay
from tollway.core.providers.messages.translate import AnthropicOverChat
from tollway.core.request import parse_head
from tollway.gateway.proxy import _error_event

BODY = b'{"model":"claude","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
BETA = "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"


def _ctx(provider: Provider, passed: tuple[tuple[str, str], ...] = ()) -> CallContext:
    return CallContext(ClientAPI.MESSAGES, BODY, parse_head(BODY), "claude-x", provider, 0.0, passed)


def _event(raw: bytes) -> tuple[str, dict]:
    head, _, data = raw.partition(b"\ndata: ")
    return head.removeprefix(b"event: ").decode(), json.loads(data)


# -- error events: which shape each translator renders ------------------------------------

@pytest.mark.parametrize("err, kind", [
    (GatewayError(502, "The upstream provider 'claude' closed the stream.", "api_error", "upstream_disconnected"), "api_error"),
    (upstream_timeout("claude", "idle"), "timeout_error"),  # a 504
    (GatewayError(429, "slow down", "rate_limit_error", "rate_limit_exceeded"), "rate_limit_error"),
    (GatewayError(503, "shutting down", "api_error", "gateway_shutting_down"), "overloaded_error"),
])
@pytest.mark.parametrize("translator", [
    AnthropicStreamRelay(),
    AnthropicOverChat().stream(_ctx(Provider(name="up", schema="openai", base_url="http://x"))),
])
def test_anthropic_translators_render_anthropic_error_events(translator, err, kind):
    raw = _error_event(translator, err)
    name, data = _event(raw)
    assert raw.endswith(b"\n\n") and name == "error"
    assert data == {"type": "error", "error": {"type": kind, "message": err.message}}


def test_translators_without_error_event_keep_openai_shape():
    from tollway.core.kernels import OpenAIStreamRelay

    err = GatewayError(502, "gone", "api_error", "upstream_disconnected")
    raw = _error_event(OpenAIStreamRelay(drop_usage_chunk=False), err)
    assert raw.startswith(b"data: ") and json.loads(raw[6:])["error"]["code"] == "upstream_disconnected"


def test_native_relay_refuses_a_stream_cut_before_message_stop():
    events = fa.message_events("claude-x", with_tool=False)
    relay = AnthropicStreamRelay()
    assert relay.feed(b"".join(events[:5])) == b"".join(events[:5])  # forwarded byte for byte
    with pytest.raises(GatewayError) as cut:
        relay.flush()
    assert cut.value.code == "upstream_disconnected"
    whole = AnthropicStreamRelay()
    whole.feed(b"".join(events))
    assert whole.flush() == b"" and whole.usage is not None and whole.usage.completion_tokens == fa.OUTPUT_TOKENS


def test_native_relay_text_for_counting_holds_thinking_and_tool_input_too():
    # Counted when the upstream reports no usage: a tool call's input and the thinking are output tokens.
    start, *rest = fa.with_usage(fa.message_events("claude-x", with_tool=True), None, None)
    relay = AnthropicStreamRelay()
    relay.feed(b"".join([start, *fa.thinking_events("Let me see. "), *rest]))
    relay.flush()
    assert relay.usage is None and relay.streamed_text() == "Let me see. " + fa.REPLY + json.dumps(fa.TOOL_INPUT)


@pytest.mark.parametrize("start, delta, expected", [
    (None, None, None),  # never reported: left to the proxy, which counts the text
    ({}, {}, None),
    ({"input_tokens": 25, "output_tokens": 1}, None, (25, 1)),  # partly reported: what was, as ever
    (None, {"output_tokens": 15}, (0, 15)),
    ({"input_tokens": 25, "output_tokens": 1}, {"output_tokens": 15}, (25, 15)),
])
def test_native_relay_usage_is_what_the_upstream_reported_else_none(start, delta, expected):
    events = b"".join(fa.with_usage(fa.message_events("claude-x", with_tool=False), start, delta))
    relay = AnthropicStreamRelay()
    assert relay.feed(events) + relay.flush() == events
    u = relay.usage
    assert (None if u is None else (u.prompt_tokens, u.completion_tokens)) == expected
    assert relay.streamed_text() == fa.REPLY


@pytest.mark.parametrize("usage", [None, {}])
def test_native_answer_without_usage_leaves_it_to_the_proxy_to_count(usage):
    body = fa.message_body("claude-x", False)
    del body["usage"]
    if usage is not None:
        body["usage"] = usage
    raw = json.dumps(body).encode()
    claude = Provider(name="claude", schema="anthropic", base_url="http://a")
    assert AnthropicNative().response(_ctx(claude), 200, raw) == (raw, None)


# -- passed headers on the pass-through ---------------------------------------------------

CLAUDE = Provider(name="claude", schema="anthropic", base_url="http://a", api_key="sk-up")


@pytest.mark.parametrize("provider, passed, expected_beta", [
    (CLAUDE, (), None),
    (CLAUDE, (("anthropic-beta", BETA),), BETA),
    (msgspec.structs.replace(CLAUDE, headers={"anthropic-beta": "operator-choice"}), (("anthropic-beta", BETA),),
     "operator-choice"),
])
def test_pass_through_forwards_anthropic_beta(provider, passed, expected_beta):
    call = AnthropicNative().build(_ctx(provider, passed))
    betas = [v for k, v in call.headers if k.lower() == "anthropic-beta"]
    assert betas == ([expected_beta] if expected_beta else [])
    assert ("x-api-key", "sk-up") in call.headers


def test_translated_pairs_never_forward_anthropic_beta():
    up = Provider(name="up", schema="openai", base_url="http://o", api_key="sk-up")
    call = AnthropicOverChat().build(_ctx(up, (("anthropic-beta", BETA),)))
    assert all(k.lower() != "anthropic-beta" for k, _ in call.headers)


# -- end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(claude: FakeAnthropic, openai_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - name: claude
    schema: anthropic
    base_url: {claude.url}
    api_key: {UPSTREAM_SECRET}
  - name: up
    schema: openai
    base_url: {openai_upstream.url}
    api_key: {UPSTREAM_SECRET}
    timeouts: {{connect: 2, first_byte: 2, idle: 1}}
models:
  - name: claude-sonnet
    targets: [{{provider: claude, model: claude-sonnet-4-5}}]
  - name: claude-dies
    targets: [{{provider: claude, model: die-mid-stream}}]
  - name: gpt-dies
    targets: [{{provider: up, model: die-mid-stream}}]
  - name: gpt-stalls
    targets: [{{provider: up, model: stall-stream}}]
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""")
    yield process
    process.stop()


@pytest.mark.parametrize("model, code_hint, kind", [
    ("claude-dies", "closed the stream", "api_error"),   # Anthropic pass-through: the upstream connection drops
    ("gpt-dies", "closed the stream", "api_error"),      # translated from an OpenAI-compatible backend
    ("gpt-stalls", "timed out (idle)", "timeout_error"),  # the gateway's idle timeout fires mid-stream (a 504)
])
def test_stream_failure_reaches_anthropic_sdk_as_error_event(ant, gw, model, code_hint, kind):
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        with ant.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            for text in s.text_stream:
                received.append(text)
    body = failed.value.body
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert code_hint in body["error"]["message"] and UPSTREAM_SECRET not in json.dumps(body)
    assert received  # part of the answer had arrived: this failed mid-stream, not before
    line = _log_line(gw, model)
    assert line["error"] in ("upstream_disconnected", "upstream_timeout")


def _log_line(gw: GatewayProcess, model: str) -> dict:
    """The access-log line of the last request for `model` (written just after the response)."""
    for _ in range(50):
        lines = [r for r in gw.log_lines() if r.get("model") == model]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {model}")


def test_pass_through_forwards_anthropic_beta_only(ant, claude):
    m = ant.messages.create(model="claude-sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                            extra_headers={"anthropic-beta": BETA, "x-custom-client": "nope"})
    assert m.content[0].text == fa.REPLY
    sent = claude.last()["headers"]
    assert sent["anthropic-beta"] == BETA and "x-custom-client" not in sent
    assert sent["x-api-key"] == UPSTREAM_SECRET and "authorization" not in sent
    assert TEST_KEY not in json.dumps(sent)


def test_sdk_betas_and_count_tokens_carry_the_header(ant, claude):
    with ant.beta.messages.stream(model="claude-sonnet", max_tokens=10, betas=["interleaved-thinking-2025-05-14"],
                                  messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == fa.REPLY
    assert claude.last()["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    ant.messages.count_tokens(model="claude-sonnet", messages=[{"role": "user", "content": "hi"}],
                              extra_headers={"anthropic-beta": "token-counting-2024-11-01"})
    assert claude.last()["path"] == "/v1/messages/count_tokens"
    assert claude.last()["headers"]["anthropic-beta"] == "token-counting-2024-11-01"


def test_no_beta_header_means_none_upstream(ant, claude, openai_upstream):
    ant.messages.create(model="claude-sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert "anthropic-beta" not in claude.last()["headers"]
    ant.messages.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                        extra_headers={"anthropic-beta": BETA})
    assert "anthropic-beta" not in openai_upstream.last("/chat/completions")["headers"]


@pytest.mark.parametrize("method, path, status, kind", [("GET", "/anthropic/v1/messages", 405, "invalid_request_error"),
                                                        ("POST", "/anthropic/v1/nope", 404, "not_found_error")])
def test_wrong_method_or_path_under_anthropic_gets_the_anthropic_error_shape(gw, method, path, status, kind):
    request = urllib.request.Request(gw.url + path, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"x-api-key": TEST_KEY, "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=5)
    body = json.loads(failed.value.read())
    assert failed.value.code == status
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]


@pytest.mark.parametrize("status, kind", [
    (402, "billing_error"), (408, "invalid_request_error"), (409, "invalid_request_error"),
    (422, "invalid_request_error"), (504, "timeout_error"), (500, "api_error"), (502, "api_error"),
])
def test_error_type_of_each_status_is_anthropics(status, kind):
    # Anthropic's error types (its SDK's ErrorType): a 4xx it lists no type for is an
    # invalid_request_error, a 504 a timeout_error, a 402 a billing_error; the rest of 5xx api_error.
    body = json.loads(error_body(GatewayError(status, "m", "api_error", "x")))
    assert body == {"type": "error", "error": {"type": kind, "message": "m"}}

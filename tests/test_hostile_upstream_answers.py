"""A hostile upstream's answers through a real gateway: every failure gets a clear answer.

Huge bodies (success or error), oversized SSE events before and after the first byte, gzip and
garbage bodies, a trickling stream, absurd retry-after values. The client (the official openai
SDK) always gets an OpenAI-shaped error with the right status, or a closing SSE error event
once its stream has begun; the gateway's memory stays bounded and it stays up.
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fakes.hostile_upstream import HostileUpstream
from tests.harness import TEST_KEY, GatewayProcess, key_hash

MODELS = ("huge-ok-300", "huge-error-300", "gzip", "garbage", "garbage-stream", "huge-event-9", "huge-event-late-9",
          "trickle-20", "ok", "echo-429", "firehose-8")


def _config(upstream: str) -> str:
    models = "\n".join(f"  - name: {m}\n    targets: [{{provider: hostile, model: {m}}}]" for m in MODELS)
    return f"""
providers:
  - name: hostile
    schema: openai
    base_url: {upstream}/v1
    api_key: sk-hostile-answers-upstream-key-0042
    timeouts: {{total: 2}}
models:
{models}
keys:
  - name: k
    key_hash: "{key_hash()}"
server:
  max_upstream_body_bytes: 4194304
routing:
  retry: {{attempts: 1}}
"""


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(_config(hostile.url))
    yield gateway
    gateway.stop()


@pytest.fixture()
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


def _chat(client: openai.OpenAI, model: str, **extra: object) -> object:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **extra)


def _error_of(client: openai.OpenAI, model: str, **extra: object) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(client, model, **extra)
    return caught.value


def _code(err: openai.APIStatusError) -> str | None:
    body = err.body if isinstance(err.body, dict) else {}
    return body.get("code")


def _raw_stream(gw: GatewayProcess, model: str, keep_last: int | None = None) -> tuple[int, int, bytes]:
    """(status, bytes received, the body or its last `keep_last` bytes) of a streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    conn.request("POST", "/v1/chat/completions", body,
                 {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    resp = conn.getresponse()
    size, kept = 0, b""
    while piece := resp.read(65536):
        size += len(piece)
        kept = kept + piece if keep_last is None else (kept + piece)[-keep_last:]
    conn.close()
    return resp.status, size, kept


def test_a_huge_success_body_is_a_502_upstream_too_large_without_reading_it(client: openai.OpenAI,
                                                                             gw: GatewayProcess) -> None:
    before = gw.settled_rss_mb()
    start = time.monotonic()
    err = _error_of(client, "huge-ok-300")
    assert err.status_code == 502 and _code(err) == "upstream_too_large"
    assert time.monotonic() - start < 2, "the declared length alone should have refused it"
    assert gw.worker_rss_mb() - before < 30


def test_a_huge_error_body_is_read_only_as_far_as_its_message(client: openai.OpenAI, gw: GatewayProcess) -> None:
    before = gw.settled_rss_mb()
    start = time.monotonic()
    err = _error_of(client, "huge-error-300")
    assert err.status_code == 500 and _code(err) != "internal_error"  # the upstream's 500, relayed
    assert len(err.response.content) < 4096
    assert time.monotonic() - start < 2
    assert gw.worker_rss_mb() - before < 30


@pytest.mark.parametrize("model", ["gzip", "garbage"])
def test_an_unreadable_body_is_a_502_upstream_malformed(client: openai.OpenAI, model: str) -> None:
    err = _error_of(client, model)
    assert err.status_code == 502 and _code(err) == "upstream_malformed"


def test_the_gateway_asks_upstreams_for_no_content_coding(client: openai.OpenAI, hostile: HostileUpstream) -> None:
    _chat(client, "ok")
    assert hostile.requests[-1]["headers"].get("accept-encoding") == "identity"


def test_a_garbage_stream_ends_with_an_error_not_a_500(client: openai.OpenAI) -> None:
    err = _error_of(client, "garbage-stream", stream=True)
    assert err.status_code == 502 and _code(err) == "upstream_malformed"


def test_an_oversized_first_event_is_a_502_before_the_first_byte(client: openai.OpenAI) -> None:
    err = _error_of(client, "huge-event-9", stream=True)
    assert err.status_code == 502 and _code(err) == "upstream_too_large"


def test_an_oversized_late_event_ends_the_stream_with_an_error_event(gw: GatewayProcess) -> None:
    status, _, text = _raw_stream(gw, "huge-event-late-9")
    assert status == 200
    last = text.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: {\"error\"") and b"upstream_too_large" in last, last[:300]


def test_a_stream_larger_than_the_cap_ends_with_an_error_event(gw: GatewayProcess) -> None:
    _, size, tail = _raw_stream(gw, "firehose-8", keep_last=2000)
    assert size < 5 * 1024 * 1024
    assert b"upstream_too_large" in tail


def test_a_trickling_stream_is_cut_at_the_total_timeout(gw: GatewayProcess) -> None:
    start = time.monotonic()
    _, _, text = _raw_stream(gw, "trickle-20")
    assert time.monotonic() - start < 6
    assert b"upstream_timeout" in text


def test_an_absurd_retry_after_is_clamped(client: openai.OpenAI) -> None:
    err = _error_of(client, "echo-429")
    assert err.status_code == 429
    for name in ("retry-after", "retry-after-ms"):
        value = err.response.headers.get(name)
        if value is not None:
            assert value.isdigit() and int(value) <= (3600 if name == "retry-after" else 3_600_000)


def test_the_gateway_is_alive_and_logged_no_traceback(gw: GatewayProcess) -> None:
    with urllib.request.urlopen(gw.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    assert "Traceback" not in gw.stderr()


# -- answers the gateway's decoders cannot hold: JSON nested past msgspec's depth limit, floats
# past float32's range. They are the upstream's malformed answers (502, retryable), not the
# gateway's failure (500), so a route falls back past them and a stream ends with an error event.

DEEP_SCHEMAS = ("openai", "anthropic", "gemini", "bedrock")


def _odd_config(upstream: str) -> str:
    return f"""
providers:
  - {{name: openai, schema: openai, base_url: {upstream}/v1, api_key: sk-hostile-answers-upstream-key-0042}}
  - {{name: anthropic, schema: anthropic, base_url: {upstream}, api_key: sk-ant-hostile-answers-key-0042}}
  - {{name: gemini, schema: gemini, base_url: {upstream}/v1beta, api_key: AIzaHostileAnswersKey0042}}
  - {{name: bedrock, schema: bedrock, region: us-east-1, base_url: {upstream}, api_key: bedrock-hostile-key-0042}}
models:
{"".join(f"  - {{name: deep-{s}, targets: [{{provider: {s}, model: deep}}]}}{chr(10)}" for s in DEEP_SCHEMAS)}
  - name: deep-then-ok
    targets: [{{provider: anthropic, model: deep, priority: 0}}, {{provider: openai, model: ok, priority: 1}}]
  - {{name: titan-huge, targets: [{{provider: bedrock, model: huge-float}}]}}
  - {{name: gemini-huge, targets: [{{provider: gemini, model: huge-float}}]}}
  - name: huge-then-ok
    targets: [{{provider: gemini, model: huge-float, priority: 0}}, {{provider: bedrock, model: ok, priority: 1}}]
keys:
  - name: k
    key_hash: "{key_hash()}"
"""


@pytest.fixture(scope="module")
def odd(hostile: HostileUpstream) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(_odd_config(hostile.url))
    yield gateway
    gateway.stop()


@pytest.fixture()
def odd_client(odd: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=odd.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


@pytest.mark.parametrize("schema", DEEP_SCHEMAS)
def test_json_nested_past_the_decoders_limit_is_a_502_upstream_malformed(odd_client: openai.OpenAI,
                                                                         schema: str) -> None:
    err = _error_of(odd_client, f"deep-{schema}")
    assert err.status_code == 502 and _code(err) == "upstream_malformed", err.body


def test_json_nested_too_deep_in_an_anthropic_messages_answer_is_a_502(odd: GatewayProcess) -> None:
    client = anthropic.Anthropic(base_url=odd.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="deep-anthropic", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502


def test_a_route_falls_back_past_an_answer_nested_too_deep(odd_client: openai.OpenAI) -> None:
    answer = _chat(odd_client, "deep-then-ok")
    assert answer.choices[0].message.content == "Hello from the hostile upstream"  # type: ignore[attr-defined]


def test_a_stream_event_nested_too_deep_ends_the_stream_with_an_error_event(odd: GatewayProcess) -> None:
    status, _, text = _raw_stream(odd, "deep-anthropic")  # after Anthropic's message_start: the stream has begun
    assert status == 200
    last = text.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: {\"error\"") and b"upstream_malformed" in last, last[:300]


def test_a_first_stream_event_nested_too_deep_is_a_502(odd_client: openai.OpenAI) -> None:
    err = _error_of(odd_client, "deep-gemini", stream=True)  # Gemini's first event is the deep one
    assert err.status_code == 502 and _code(err) == "upstream_malformed"


@pytest.mark.parametrize("model", ["titan-huge", "gemini-huge"])
def test_an_embedding_beyond_float32_is_a_502_upstream_malformed_in_base64(odd_client: openai.OpenAI,
                                                                           model: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        odd_client.embeddings.create(model=model, input="hello")  # the SDK asks for base64
    assert caught.value.status_code == 502 and _code(caught.value) == "upstream_malformed"


def test_a_route_falls_back_past_an_embedding_beyond_float32(odd_client: openai.OpenAI) -> None:
    answer = odd_client.embeddings.create(model="huge-then-ok", input="hello")
    assert len(answer.data[0].embedding) == 3


def test_the_odd_answers_left_no_traceback(odd: GatewayProcess) -> None:
    assert "Traceback" not in odd.stderr()

"""Every error a client can meet: right status, OpenAI shape, useful message, no secret."""
from __future__ import annotations

import json
import socket
import time
import urllib.request

import openai
import pytest

from tests.fakes.openai_upstream import REPLY
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess
from tollway.core.errors import GatewayError
from tollway.core.providers.openai_compat import ChatStreamRelay
from tollway.ext.usage import MAX_TOKENS, Usage


def post(gateway: GatewayProcess, body: bytes | str, key: str | None = TEST_KEY, path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    import urllib.error
    import urllib.request

    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(gateway.url + path, data=data, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def assert_openai_error(body: dict, code: str | None = None, kind: str | None = None) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if kind is not None:
        assert err["type"] == kind
    return err


CHAT = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}'


@pytest.mark.parametrize("body,fragment", [
    ('{"model": "gpt-4o-mini", "messages": [', "could not parse"),
    ("not json at all", "could not parse"),
    ('[1, 2]', "JSON object"),
    ('{"messages": []}', "model"),
    ('{"model": "gpt-4o-mini", "stream": "yes"}', "stream"),
    ("", "empty"),
])
def test_bad_bodies_are_400(gateway, body, fragment):
    status, _, resp = post(gateway, body)
    assert status == 400
    assert fragment in assert_openai_error(resp, kind="invalid_request_error")["message"]


def test_json_nested_too_deep_is_400(gateway):
    deep = '{"model":"gpt-4o-mini","x":' + "[" * 200 + "]" * 200 + "}"
    status, _, resp = post(gateway, deep)
    assert status == 400 and "nested deeper" in assert_openai_error(resp)["message"]
    ok = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"x":' + "[" * 100 + "]" * 100 + "}"
    assert post(gateway, ok)[0] == 200


def test_missing_and_bad_keys_are_401(gateway):
    status, _, resp = post(gateway, CHAT, key=None)
    assert status == 401 and "API key" in assert_openai_error(resp, code="invalid_api_key")["message"]
    status, _, resp = post(gateway, CHAT, key="sk-wrong")
    assert status == 401
    status, _, _ = post(gateway, CHAT, key=None, headers={"authorization": f"Basic {TEST_KEY}"})
    assert status == 401


def test_model_not_allowed_for_key_is_403(gateway):
    body = '{"model":"llama-3-8b","messages":[{"role":"user","content":"x"}]}'
    status, _, resp = post(gateway, body, key=OTHER_KEY)
    assert status == 403 and assert_openai_error(resp)["param"] == "model"


@pytest.mark.parametrize("key", [TEST_KEY, OTHER_KEY])
def test_unknown_model_is_404_for_every_key(gateway, key):
    status, _, resp = post(gateway, '{"model":"gpt-9-ultra","messages":[]}', key=key)
    assert status == 404
    assert_openai_error(resp, code="model_not_found")


def _raw_exchange(gateway: GatewayProcess, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request by hand and return the reply, even if the gateway answers (and closes)
    before the whole body was sent, as it should for an oversized body."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:
            pass
        return s.recv(65536)


def test_body_over_limit_is_413(gateway):
    size = 1024 * 1024 + 10
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % size +
            b"authorization: Bearer " + TEST_KEY.encode() + b"\r\ncontent-type: application/json\r\n\r\n")
    reply = _raw_exchange(gateway, head, [b"x" * 65536] * (size // 65536 + 1))
    assert reply.startswith(b"HTTP/1.1 413")
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert assert_openai_error(body)["code"] == "request_too_large"


def test_chunked_body_over_limit_is_413(gateway):
    """Without a content-length the gateway still stops at the limit."""
    chunk = b"x" * 65536
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
            b"authorization: Bearer " + TEST_KEY.encode() + b"\r\ncontent-type: application/json\r\n\r\n")
    reply = _raw_exchange(gateway, head, [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * 20 + [b"0\r\n\r\n"])
    assert reply.startswith(b"HTTP/1.1 413")


def test_unknown_path_and_method(gateway):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(gateway.url + "/v1/nothing-here", timeout=5)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "unknown_url"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(gateway.url + "/v1/chat/completions", timeout=5)
    assert e.value.code == 405


def test_dead_upstream_is_502(gateway):
    status, _, resp = post(gateway, '{"model":"dead-model","messages":[]}')
    assert status == 502 and assert_openai_error(resp, code="upstream_unreachable")["message"]


def test_upstream_timeout_is_504(gateway, openai_upstream):
    tries = sum(r["body"].get("model") == "slow-first-byte" for r in list(openai_upstream.requests))
    status, _, resp = post(gateway, '{"model":"slow-first-byte","messages":[]}')
    assert status == 504 and "first_byte" in assert_openai_error(resp, code="upstream_timeout")["message"]
    after = sum(r["body"].get("model") == "slow-first-byte" for r in list(openai_upstream.requests))
    assert after - tries == 1, "a target that timed out is not tried again (the client would wait twice)"


def test_upstream_5xx_and_429_are_relayed(gateway):
    status, _, resp = post(gateway, '{"model":"fail-500","messages":[]}')
    assert status == 500 and assert_openai_error(resp)["type"] == "server_error"
    status, headers, resp = post(gateway, '{"model":"fail-429","messages":[]}')
    assert status == 429 and headers.get("retry-after") == "1"
    assert assert_openai_error(resp)["code"] == "rate_limit_exceeded"


def test_upstream_auth_failure_is_502_without_the_credential(gateway):
    status, _, resp = post(gateway, '{"model":"bad-auth","messages":[]}')
    assert status == 502
    err = assert_openai_error(resp, code="upstream_auth_failed")
    assert UPSTREAM_SECRET not in json.dumps(resp) and "operator" in err["message"]


def test_upstream_error_quoting_the_key_is_scrubbed(gateway):
    status, _, resp = post(gateway, '{"model":"leaky-error","messages":[]}')
    assert status == 400
    assert UPSTREAM_SECRET not in json.dumps(resp) and "temperature" in resp["error"]["message"]


def _stream_events(gateway: GatewayProcess, model: str) -> list[str]:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, stream=True, messages=[{"role": "user", "content": "x"}])
    return [line for line in raw.http_response.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("model,code", [("stall-stream", "upstream_timeout"), ("die-mid-stream", "upstream_disconnected"),
                                        ("ends-early", "upstream_disconnected")])
def test_stream_failure_mid_way_ends_with_sse_error_event(gateway, model, code):
    # ends-early: the upstream ends its answer cleanly but without the finish chunk or [DONE];
    # relayed as it is, the SDK would take the cut text for the whole answer.
    start = time.monotonic()
    events = _stream_events(gateway, model)
    assert time.monotonic() - start < 10
    assert len(events) >= 3  # role chunk + two words made it through before the failure
    last = json.loads(events[-1][len("data: "):])
    assert last["error"]["code"] == code


def test_an_event_the_stream_ends_inside_is_neither_sent_nor_billed():
    # No blank line after the last event and no end: an SSE client would drop that event, and
    # the relay sends the error event instead; the text it held is not counted either.
    relay = ChatStreamRelay(drop_usage_chunk=True)
    sent = relay.feed(b'data: {"choices": [{"index": 0, "delta": {"content": "Hello"}}]}\n\n'
                      b'data: {"choices": [{"index": 0, "delta": {"content": " never seen"}}]}')
    with pytest.raises(GatewayError) as ended:
        relay.flush()
    assert ended.value.code == "upstream_disconnected" and b"never seen" not in sent
    assert relay.streamed_text() == "Hello"


def test_stream_ended_after_its_finish_chunk_without_done_is_whole(gateway):
    # Some OpenAI-compatible servers end after the finish (and usage) chunk, with no [DONE]:
    # that answer came whole, so no error event is added.
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(model="no-done", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "x"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert _stream_events(gateway, "no-done")[-1].startswith('data: {"id"')


@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
                                   "reasoning_tokens", "cache_write_tokens", "units"])
@pytest.mark.parametrize("value", [-7, 10**20, float("nan")])
def test_every_count_of_a_usage_is_held_to_bounds(field, value):
    # The ledger stores every count (a cached count past SQLite's integer dropped the record; a
    # negative reasoning count was stored as it came), and spans export each as an int64.
    if value != value and field != "units":
        return  # (counts are ints)
    held = Usage(**{"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, field: value, "unit": "character"})
    if value != value:  # NaN units: no number at all, kept so for pricing to call unpriceable
        assert held.units != held.units
    else:
        assert getattr(held, field) == (MAX_TOKENS if value == 10**20 else 0)
    counts = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
              "cache_write_tokens")
    assert held.unit == "character" and all(0 <= getattr(held, f) <= MAX_TOKENS for f in counts)
    others = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert all(getattr(held, f) == v for f, v in others.items() if f != field)  # the sane ones untouched


@pytest.mark.parametrize("model", ["usage-negative", "usage-huge"])
def test_an_upstreams_absurd_usage_costs_no_record_and_runs_no_counter_backwards(gateway, model):
    # A count past any float raised in the metrics before the access log and the ledger were
    # written; a negative one ran tollway_tokens_total backwards. Both are held to 0..MAX_TOKENS.
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert raw.parse().choices[0].message.content == REPLY
    line = gateway.log_line(raw.headers["x-request-id"])
    assert 0 <= line["prompt_tokens"] <= MAX_TOKENS and 0 <= line["completion_tokens"] <= MAX_TOKENS
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=5) as r:
        counted = [float(x.rsplit(" ", 1)[1]) for x in r.read().decode().splitlines()
                   if x.startswith("tollway_tokens_total{") and f'model="{model}"' in x]
    assert all(v >= 0 for v in counted)  # (a count held to 0 adds no series)
    assert "Traceback" not in gateway.stderr()


def test_stream_without_upstream_usage_is_counted_with_tiktoken(gateway):
    events = _stream_events(gateway, "no-usage")
    assert events[-1] == "data: [DONE]"
    deadline = time.monotonic() + 10  # the process's first count loads the tokenizer (~0.2-0.5 s)
    while not (lines := [r for r in gateway.log_lines() if r.get("model") == "no-usage"]):
        assert time.monotonic() < deadline, "no access-log line for the stream"
        time.sleep(0.05)
    line = lines[-1]
    # "The quick brown fox jumps over the lazy dog" is 9 tokens in o200k_base.
    assert line["completion_tokens"] == 9 and line["prompt_tokens"] >= 1


def test_openai_sdk_raises_typed_errors(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="bad", max_retries=0).models.list()


def test_no_secret_in_any_log_line_and_gateway_still_up(gateway):
    """Runs last in this module: everything above went through the same gateway."""
    import urllib.request

    out = gateway.raw_output()
    assert UPSTREAM_SECRET not in out and TEST_KEY not in out and OTHER_KEY not in out
    assert "hello there" not in out  # prompts are not logged either
    lines = gateway.log_lines()
    assert lines and all({"request_id", "key", "model", "provider", "status", "latency_ms"} <= set(r) for r in lines)
    with urllib.request.urlopen(gateway.url + "/healthz", timeout=5) as r:
        assert r.status == 200

"""Routing through a real gateway: retries with retry-after, the attempt budget, the header
override, and passive health at the route level, seen through the official openai SDK. Then
what an upstream's bad answers do to retries and health (the hostile fake): an answer too
large, a stream broken after its first byte, a body cut short, a redirect."""
from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.fakes.vllm_replica import FakeVLLMReplica
from tests.harness import TEST_KEY, GatewayProcess, free_port, key_hash


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, FakeVLLMReplica]]:
    made = {name: FakeVLLMReplica(name) for name in ("flaky", "primary", "backup", "other")}
    yield made
    for r in made.values():
        r.kill()


@pytest.fixture(scope="module")
def gw(replicas) -> Iterator[GatewayProcess]:
    providers = "\n".join(f"  - {{name: {n}, schema: openai, base_url: \"{r.url}\"}}" for n, r in replicas.items())
    gateway = GatewayProcess(f"""
providers:
{providers}
models:
  - {{name: flaky, targets: [{{provider: flaky}}]}}
  - {{name: other, targets: [{{provider: other}}]}}
  - name: ha
    targets:
      - {{provider: primary, priority: 0}}
      - {{provider: backup, priority: 1}}
keys:
  - {{name: app, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  retry: {{attempts: 3, backoff_base: 0.05, backoff_max: 0.2, max_retry_after: 2, deadline: 10}}
  outlier_detection: {{consecutive_failures: 3, cool_down: 60}}
server: {{access_log: false}}
""")
    yield gateway
    gateway.stop()


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


def ask(gw: GatewayProcess, model: str, **kw):
    return sdk(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


def test_retry_honours_retry_after_then_succeeds(gw, replicas):
    flaky = replicas["flaky"]
    flaky.fail_status, flaky.fail_times, flaky.retry_after = 503, 2, "0.4"
    start = time.monotonic()
    reply = ask(gw, "flaky")
    took = time.monotonic() - start
    assert reply.system_fingerprint == "flaky"
    assert took >= 0.8, f"two retries honouring retry-after 0.4s took only {took:.2f}s"
    assert len(flaky.models_seen) == 3


def test_attempt_budget_ends_with_the_upstream_error(gw, replicas):
    flaky = replicas["flaky"]
    flaky.fail_status, flaky.fail_times, flaky.retry_after = 503, 10, None
    seen = len(flaky.models_seen)
    with pytest.raises(openai.InternalServerError) as err:
        ask(gw, "flaky")
    assert err.value.status_code == 503
    assert len(flaky.models_seen) - seen == 3, "attempts: 3"


def test_a_retry_after_beyond_the_limit_is_passed_to_the_client_not_waited(gw, replicas):
    flaky = replicas["flaky"]
    flaky.fail_status, flaky.fail_times, flaky.retry_after = 429, 10, "30"
    seen, start = len(flaky.models_seen), time.monotonic()
    with pytest.raises(openai.RateLimitError) as err:
        ask(gw, "flaky")
    assert time.monotonic() - start < 1.0
    assert len(flaky.models_seen) - seen == 1
    assert err.value.response.headers.get("retry-after") == "30"
    flaky.fail_status = None


def test_header_routing_wins_over_the_body(gw, replicas):
    req = sdk(gw).chat.completions.with_raw_response.create(
        model="flaky", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-tollway-model": "other"})
    assert req.parse().system_fingerprint == "other"
    # The upstream is asked for the header's model, not the one the body names.
    assert replicas["other"].models_seen[-1] == "other"


def test_failing_primary_falls_back_then_is_ejected(gw, replicas):
    primary = replicas["primary"]
    primary.fail_status = 500
    for _ in range(6):  # streams too: the fallback happens before the first byte, so the client never knows
        chunks = list(ask(gw, "ha", stream=True))
        assert chunks[0].system_fingerprint == "backup"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "Hello from vLLM"
    assert ask(gw, "ha").system_fingerprint == "backup"
    tried = len(primary.models_seen)
    assert tried == 3, f"ejected after 3 consecutive failures, but it was tried {tried} times"
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'tollway_upstream_available{endpoint="",provider="primary"} 0.0' in text
    assert 'tollway_upstream_ejections{endpoint="",provider="primary"} 1.0' in text


# -- bad answers: what they cost in retries, and what they say about the upstream's health --

@pytest.fixture(scope="module")
def bad(hostile: HostileUpstream, replicas) -> Iterator[GatewayProcess]:
    """One provider per test on the hostile fake (each with its own breaker), a two-replica pool
    on it (127.0.0.1 and localhost), and a healthy fallback."""
    port = hostile.url.rsplit(":", 1)[1]
    on_hostile = "\n".join(f"  - {{name: {n}, schema: openai, base_url: \"{hostile.url}/v1\", timeouts: {{idle: 0.3}}}}"
                           for n in ("big", "mid", "cut", "moved", "audio"))
    gateway = GatewayProcess(f"""
providers:
{on_hostile}
  - name: pool
    schema: openai
    endpoints: ["http://127.0.0.1:{port}/v1", "http://localhost:{port}/v1"]
    pick: round_robin
    scrape: {{interval: 60}}
  - {{name: spare, schema: openai, base_url: "{replicas['backup'].url}"}}
models:
  - {{name: big, targets: [{{provider: big, model: huge-ok-1}}]}}
  - name: mid
    targets: [{{provider: mid, model: scripted, priority: 0}}, {{provider: spare, priority: 1}}]
  - name: cut
    targets: [{{provider: cut, model: scripted, priority: 0}}, {{provider: spare, priority: 1}}]
  - {{name: pool, targets: [{{provider: pool, model: scripted}}]}}
  - {{name: moved, targets: [{{provider: moved, model: scripted}}]}}
  - {{name: tts-1, targets: [{{provider: audio, model: scripted}}]}}
keys:
  - {{name: app, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  retry: {{attempts: 3, backoff_base: 0.01, backoff_max: 0.02, deadline: 10}}
  outlier_detection: {{consecutive_failures: 3, cool_down: 60}}
server: {{access_log: false, max_upstream_body_bytes: 65536}}
""")
    yield gateway
    gateway.stop()


def _available(gw: GatewayProcess, provider: str, expect: str | None = None) -> str:
    """The provider's `tollway_upstream_available` gauge, once it reads `expect` (or 5 s have
    passed): the gateway records an attempt's outcome after the client has its last byte."""
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        line = next(ln for ln in text.splitlines()
                    if ln.startswith(f'tollway_upstream_available{{endpoint="",provider="{provider}"}}'))
        value = line.rsplit(" ", 1)[1]
        if expect is None or value == expect or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def _code(err: openai.APIStatusError) -> str | None:
    return err.body.get("code") if isinstance(err.body, dict) else None


_EVENT = (b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": '
          b'[{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]}\n\n')


def test_an_answer_too_large_is_not_retried_nor_held_against_the_provider(bad, hostile):
    # The same request gets the same answer: each retry would be another whole (billed)
    # generation, and one client's big answers must not eject the provider for everyone.
    for i in range(4):
        with pytest.raises(openai.APIStatusError) as err:
            ask(bad, "big")
        assert (err.value.status_code, _code(err.value)) == (502, "upstream_too_large")
        assert sum(r["model"] == "huge-ok-1" for r in hostile.requests) == i + 1, "tried once per request"
    assert _available(bad, "big") == "1.0"


@pytest.mark.parametrize("framing,pause,code", [("cut", 0.0, "upstream_disconnected"),
                                                ("chunked", 5.0, "upstream_timeout")])
def test_streams_that_break_after_the_first_byte_eject_the_provider(bad, hostile, framing, pause, code):
    # One event reaches the client, then the upstream drops the connection (or goes idle past
    # its 0.3 s): the client is told in the stream, and the provider's breaker counts it.
    name = "mid" if framing == "chunked" else "cut"
    hostile.script(Answer(headers=(("content-type", "text/event-stream"),), chunks=(_EVENT, _EVENT, _EVENT),
                          framing=framing, pause=pause))
    for _ in range(3):
        stream = sdk(bad).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content == "Hel"
        with pytest.raises(openai.APIError) as err:
            list(stream)
        assert code in str(err.value.body) or code.replace("_", " ") in str(err.value), err.value
    assert _available(bad, name, expect="0.0") == "0.0", "three broken streams in a row eject the provider"
    reply = sdk(bad).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert next(iter(reply)).system_fingerprint == "backup", "the next stream goes to the fallback"


def test_audio_the_upstream_breaks_off_after_its_first_byte_ejects_the_provider(bad, hostile):
    # A media answer has no error event: the client gets a short answer, and the breaker counts it.
    hostile.script(Answer(headers=(("content-type", "audio/mpeg"),), chunks=(b"ID3-first", b"-second", b"-never"),
                          framing="cut"))
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", bad.port, timeout=20)
        conn.request("POST", "/v1/audio/speech", json.dumps({"model": "tts-1", "voice": "alloy", "input": "hi"}),
                     {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        try:
            got = resp.read()
        except http.client.IncompleteRead as short:
            got = short.partial
        assert got.startswith(b"ID3-first") and b"-never" not in got
        conn.close()
    assert _available(bad, "audio", expect="0.0") == "0.0", "three broken answers in a row eject the provider"


def test_a_body_cut_short_is_an_attempt_not_a_free_retry_on_another_replica(bad, hostile):
    # The replica got the request and answered part of it (a generation): trying the pool's
    # other replica costs another one, so it is an attempt from the budget, and the client is
    # told the upstream disconnected, not that it "could not be reached".
    hostile.script(Answer(headers=(("content-type", "application/json"),), chunks=(b'{"id": "partial',),
                          framing="short"))
    served = hostile.scripted_served
    with pytest.raises(openai.APIStatusError) as err:
        ask(bad, "pool")
    assert (err.value.status_code, _code(err.value)) == (502, "upstream_disconnected")
    assert hostile.scripted_served - served == 3, "attempts: 3, and no free retries"


@pytest.mark.parametrize("status,body", [(307, b'{"id": "x", "object": "chat.completion", "created": 1, "model": "m", '
                                               b'"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, '
                                               b'"total_tokens": 2}}'),
                                         (301, b"{}"), (302, b"<html>moved</html>")])
def test_an_upstream_redirect_is_a_502_not_relayed_nor_followed(bad, hostile, status, body):
    # A gateway that relayed it would hand the client the upstream's redirect (and its
    # location); one that followed it would send the request, credential and all, elsewhere.
    hostile.script(Answer(status=status, headers=(("location", "http://evil.example/"),
                                                  ("content-type", "application/json")), chunks=(body,)))
    conn = http.client.HTTPConnection("127.0.0.1", bad.port, timeout=20)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "moved", "messages": [{"role": "user", "content": "hi"}]}),
                 {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert (resp.status, answer["error"]["code"]) == (502, "upstream_malformed")
    assert resp.getheader("location") is None


def test_a_pools_spare_replica_is_tried_for_free_after_a_dead_primary(hostile):
    """The primary target cannot be reached, then the fallback pool's first pick is a dead
    replica: the pool's live replica is still tried for free. (One set of failed endpoints for
    the whole request counted the primary's against the pool's size: a 502 with a live replica.)"""
    dead_primary, dead_replica = free_port(), free_port()  # nothing listens: connection refused
    gateway = GatewayProcess(f"""
providers:
  - {{name: primary, schema: openai, base_url: "http://127.0.0.1:{dead_primary}/v1"}}
  - name: pool
    schema: openai
    pick: round_robin
    endpoints: ["{hostile.url}/v1", "http://127.0.0.1:{dead_replica}/v1"]
models:
  - name: spread
    targets: [{{provider: primary, priority: 0}}, {{provider: pool, model: ok, priority: 1}}]
keys:
  - {{name: app, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  retry: {{attempts: 2, backoff_base: 0.01, backoff_max: 0.02, deadline: 10}}
server: {{access_log: false}}
""")
    try:  # (neither replica serves load metrics: round robin offers the second, the dead one, first)
        assert ask(gateway, "spread").choices[0].message.content
    finally:
        gateway.stop()

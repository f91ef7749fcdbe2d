"""Traces from a real gateway process to a fake OTLP collector, with the openai SDK as client."""
from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.otlp_collector import FakeCollector
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, free_port, key_hash

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
COLLECTOR_TOKEN = "otel-collector-token-7777"
PROMPT = "purple-elephant-prompt-text"


def _config(upstream: str, collector: str) -> str:
    return f"""
providers:
  - {{name: up, schema: openai, base_url: "{upstream}", api_key: {UPSTREAM_SECRET}}}
  - {{name: flaky, schema: openai, base_url: "{upstream}", api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: held-by-name, match: "held-.*", targets: [{{provider: up}}]}}
  - {{name: broken, targets: [{{provider: flaky, model: fail-500}}]}}
  - name: ha
    targets:
      - {{provider: flaky, model: fail-500, priority: 0}}
      - {{provider: up, model: gpt-4o-mini, priority: 1}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  retry: {{attempts: 2, backoff_base: 0.01, backoff_max: 0.02}}
  outlier_detection: {{consecutive_failures: 1000}}
telemetry:
  traces:
    endpoint: {collector}
    export_interval: 0.1
    headers: {{authorization: "Bearer ${{OTEL_TOKEN}}"}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def collector() -> Iterator[FakeCollector]:
    fake = FakeCollector()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(upstream, collector) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(_config(upstream.url, collector.url), env={"OTEL_TOKEN": COLLECTOR_TOKEN})
    yield gateway
    gateway.stop()


def _rid() -> str:
    return "req-trace-" + os.urandom(6).hex()


def _ask(gw: GatewayProcess, model: str, rid: str, headers: dict[str, str] | None = None, **kw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                          extra_headers={"x-request-id": rid, **(headers or {})}, **kw)


def _spans_of(collector: FakeCollector, rid: str) -> tuple[dict, list[dict]]:
    """The SERVER span of request `rid` and its CLIENT children, in attempt order."""
    server = collector.wait_for(lambda s: s["kind"] == 2 and s["attrs"].get("tollway.request_id") == rid)
    assert len(server) == 1, f"expected one SERVER span for {rid}, got {server}"
    children = collector.wait_for(lambda s: s.get("parentSpanId") == server[0]["spanId"])
    return server[0], sorted(children, key=lambda s: s["attrs"]["tollway.attempt"])


def _upstream_request(upstream: FakeOpenAI, trace_id: str) -> dict:
    return next(r for r in reversed(upstream.requests) if trace_id in r["headers"].get("traceparent", ""))


def test_a_traced_chat_continues_the_callers_trace_and_names_the_client_span_upstream(gw, upstream, collector):
    rid = _rid()
    reply = _ask(gw, "gpt-4o-mini", rid, {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "rojo=00f0"},
                 max_tokens=50)
    assert reply.choices[0].message.content
    server, clients = _spans_of(collector, rid)
    assert (server["traceId"], server["parentSpanId"], server["name"], server["kind"]) == (
        TRACE, PARENT, "chat gpt-4o-mini", 2)
    assert server["status"] == {"code": 1} and server["traceState"] == "rojo=00f0"
    assert int(server["endTimeUnixNano"]) > int(server["startTimeUnixNano"]) > 1_600_000_000 * 10**9
    assert server["attrs"] == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini", "gen_ai.request.max_tokens": 50, "gen_ai.request.stream": False,
        "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 9, "http.response.status_code": 200,
        "tollway.request_id": rid, "tollway.key": "test-key", "tollway.route": "gpt-4o-mini", "tollway.api": "chat",
    }
    assert len(clients) == 1
    client = clients[0]
    assert (client["traceId"], client["name"], client["kind"], client["status"]) == (
        TRACE, "chat gpt-4o-mini", 3, {"code": 1})
    assert client["attrs"]["server.address"] == "127.0.0.1"
    assert client["attrs"]["server.port"] == upstream.server.port
    assert client["attrs"]["http.response.status_code"] == 200 and client["attrs"]["tollway.attempt"] == 1
    assert client["attrs"]["gen_ai.provider.name"] == "openai"
    assert int(server["startTimeUnixNano"]) <= int(client["startTimeUnixNano"]) <= int(client["endTimeUnixNano"])
    seen = _upstream_request(upstream, TRACE)
    assert seen["headers"]["traceparent"] == f"00-{TRACE}-{client['spanId']}-01"
    assert seen["headers"]["tracestate"] == "rojo=00f0"
    assert seen["header_names"].count("traceparent") == 1, "the caller's traceparent is not forwarded as well"


def test_a_request_without_traceparent_starts_a_new_trace(gw, upstream, collector):
    rid = _rid()
    _ask(gw, "gpt-4o-mini", rid, {"traceparent": "00-not-a-valid-header-01"})
    server, clients = _spans_of(collector, rid)
    assert re.fullmatch(r"[0-9a-f]{32}", server["traceId"]) and server["traceId"] != TRACE
    assert "parentSpanId" not in server and len(clients) == 1
    seen = _upstream_request(upstream, server["traceId"])
    assert seen["headers"]["traceparent"] == f"00-{server['traceId']}-{clients[0]['spanId']}-01"
    assert "tracestate" not in seen["headers"]


def test_a_stream_records_usage_on_both_spans(gw, collector):
    rid = _rid()
    chunks = list(_ask(gw, "gpt-4o-mini", rid, stream=True))
    assert chunks
    server, (client,) = _spans_of(collector, rid)
    for span in (server, client):
        assert span["attrs"]["gen_ai.usage.input_tokens"] == 1
        assert span["attrs"]["gen_ai.usage.output_tokens"] == 9
    assert server["attrs"]["gen_ai.request.stream"] is True


def test_a_fallback_shows_as_two_client_spans_the_first_failed(gw, collector):
    rid = _rid()
    _ask(gw, "ha", rid)
    server, clients = _spans_of(collector, rid)
    assert server["status"] == {"code": 1} and server["name"] == "chat ha"
    assert server["attrs"]["gen_ai.response.model"] == "gpt-4o-mini"
    first, second = clients
    assert first["name"] == "chat fail-500" and first["status"]["code"] == 2
    assert first["attrs"]["error.type"] == "500" and first["attrs"]["http.response.status_code"] == 500
    assert first["attrs"]["tollway.provider"] == "flaky" and first["attrs"]["tollway.attempt"] == 1
    assert "gen_ai.usage.output_tokens" not in first["attrs"]
    assert second["name"] == "chat gpt-4o-mini" and second["status"] == {"code": 1}
    assert second["attrs"]["tollway.attempt"] == 2 and second["attrs"]["gen_ai.usage.output_tokens"] == 9


def test_an_upstream_error_gives_an_error_span(gw, collector):
    rid = _rid()
    with pytest.raises(openai.InternalServerError):
        _ask(gw, "broken", rid)
    server, clients = _spans_of(collector, rid)
    assert server["status"]["code"] == 2 and server["attrs"]["error.type"]
    assert server["status"]["message"] == server["attrs"]["error.type"]
    assert server["attrs"]["http.response.status_code"] == 500
    assert [c["attrs"]["error.type"] for c in clients] == ["500", "500"], "attempts: 2, both failed"


def test_a_request_that_fails_authentication_gets_no_span(upstream, collector):
    """Else anyone could force spans into a trace id of their choosing, sampled flag and all.
    With sample_ratio 0 only a caller's sampled flag can record a trace: an authenticated one still does."""
    gw = GatewayProcess(_config(upstream.url, collector.url) + "    sample_ratio: 0\n", env={"OTEL_TOKEN": COLLECTOR_TOKEN})
    forced = [os.urandom(16).hex() for _ in range(2)]
    try:
        bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong-key-SECRET-42", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}],
                                        extra_headers={"traceparent": f"00-{forced[0]}-{PARENT}-01"})
        anthropic = urllib.request.Request(  # the Anthropic path authenticates with its own x-api-key
            gw.url + "/anthropic/v1/messages", method="POST", data=b'{"model":"gpt-4o-mini","max_tokens":5}',
            headers={"x-api-key": "sk-wrong-key-SECRET-42", "content-type": "application/json",
                     "traceparent": f"00-{forced[1]}-{PARENT}-01"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(anthropic, timeout=10)
        assert err.value.code == 401
        unsampled, parented = _rid(), _rid()
        _ask(gw, "gpt-4o-mini", unsampled)  # a new trace under ratio 0: not recorded
        _ask(gw, "gpt-4o-mini", parented, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
        server, clients = _spans_of(collector, parented)
        assert server["traceId"] == TRACE and len(clients) == 1, "parent-based sampling stays for authenticated callers"
        time.sleep(0.3)  # two more export intervals: anything else queued has arrived by now
        seen = collector.spans()
        assert not [s for s in seen if s["traceId"] in forced]
        assert unsampled not in {s["attrs"].get("tollway.request_id") for s in seen}
    finally:
        gw.stop()


def test_a_megabyte_model_name_is_cut_short_in_its_span(gw, collector):
    """Spans are queued by count: a client-chosen string must not make one span megabytes."""
    rid, model = _rid(), "m" * 1_000_000
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError):  # the 404 path still records the model asked for
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-request-id": rid})
    server, = collector.wait_for(lambda s: s["attrs"].get("tollway.request_id") == rid)  # no CLIENT span to wait for
    requested = server["attrs"]["gen_ai.request.model"]
    assert len(requested) == 256 and requested == "m" * 255 + "\u2026"
    assert server["name"] == f"chat {requested}"
    assert max(len(b) for b in collector.bodies) < 10_000


def test_exports_carry_no_secret_and_no_content(gw, collector):
    rid = _rid()
    _ask(gw, "gpt-4o-mini", rid)
    _spans_of(collector, rid)
    raw = b"".join(collector.bodies)
    assert raw
    for secret in (UPSTREAM_SECRET, TEST_KEY, "sk-wrong-key-SECRET-42", PROMPT, "quick brown fox", "/v1/chat",
                   COLLECTOR_TOKEN):
        assert secret.encode() not in raw, secret
    assert collector.headers[-1]["authorization"] == f"Bearer {COLLECTOR_TOKEN}"
    assert collector.headers[-1]["content-type"] == "application/json"
    assert COLLECTOR_TOKEN not in gw.raw_output()
    health = [s for s in collector.spans() if s["attrs"].get("tollway.api") in ("health", "metrics")]
    assert health == []


# -- a collector that is down, and tracing off -------------------------------------------------

def _metric(gw: GatewayProcess, name: str, labels: str) -> float:
    text = urllib.request.urlopen(gw.url + "/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_a_dead_collector_costs_requests_nothing_and_is_logged_once(upstream):
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    gw = GatewayProcess(_config(upstream.url, dead), env={"OTEL_TOKEN": COLLECTOR_TOKEN})
    try:
        for _ in range(3):
            assert _ask(gw, "gpt-4o-mini", _rid()).choices[0].message.content
            time.sleep(0.25)  # past an export interval: each request's spans go in their own batch
        deadline = time.monotonic() + 5
        while _metric(gw, "tollway_trace_exports_total", 'outcome="failed"') < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(gw, "tollway_trace_exports_total", 'outcome="failed"') >= 3
        assert _metric(gw, "tollway_trace_spans_dropped_total", 'reason="export_failed"') >= 6
        incident = [line for line in gw.stderr().splitlines() if "trace export" in line]
        assert len(incident) == 1, incident
        assert f"127.0.0.1:{dead.split(':')[2].split('/')[0]}" in incident[0]
        assert COLLECTOR_TOKEN not in gw.raw_output()
    finally:
        gw.stop()


def test_tracing_off_adds_no_traceparent_and_exports_nothing(gateway, openai_upstream):
    """The session gateway (tests/conftest.py) has no telemetry section."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    seen = openai_upstream.last("/chat/completions")
    assert "traceparent" not in seen["header_names"] and "tracestate" not in seen["header_names"]
    text = urllib.request.urlopen(gateway.url + "/metrics", timeout=5).read().decode()
    assert "tollway_trace_exports_total{" not in text and "tollway_trace_spans_dropped_total{" not in text


def test_a_reload_turns_tracing_on_and_off(upstream, collector):
    traced = _config(upstream.url, collector.url)
    untraced = traced.split("telemetry:")[0]
    gw = GatewayProcess(untraced, env={"OTEL_TOKEN": COLLECTOR_TOKEN})

    def reload(text: str, count: int) -> None:
        gw.config_path.write_text(text)
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.stderr().count("config reloaded") < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.stderr().count("config reloaded") >= count

    try:
        before = _rid()
        _ask(gw, "gpt-4o-mini", before)
        reload(traced, 1)
        during = _rid()
        _ask(gw, "gpt-4o-mini", during)
        assert _spans_of(collector, during)[1], "tracing is on after the reload"
        reload(untraced, 2)
        after = _rid()
        _ask(gw, "gpt-4o-mini", after)
        time.sleep(0.3)
        traced_ids = {s["attrs"].get("tollway.request_id") for s in collector.spans()}
        assert before not in traced_ids and after not in traced_ids
        assert "traceparent" not in upstream.last("/chat/completions")["header_names"]
    finally:
        gw.stop()


def test_a_held_credential_in_a_matched_model_name_reaches_no_span(gw, collector):
    # A `match:` route sends the client's model name upstream as it is; the attempt's CLIENT
    # span took it unmasked while the SERVER span, the log and the errors masked it.
    rid = _rid()
    _ask(gw, f"held-{UPSTREAM_SECRET}", rid)
    server = collector.wait_for(lambda s: s["kind"] == 2 and s["attrs"].get("tollway.request_id") == rid)
    assert server and collector.wait_for(lambda s: s.get("parentSpanId") == server[0]["spanId"])  # the CLIENT span
    assert UPSTREAM_SECRET.encode() not in b"".join(collector.bodies)

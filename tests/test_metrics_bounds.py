"""Every label, log `error` and span `error.type` a client or an upstream can choose is bounded.

The attack this guards against: distinct long model names on a `match:` route, or an upstream
answering errors with made-up `type`/`code` strings, each became a new Prometheus series that
lived forever, so /metrics grew by megabytes per request and one scrape stalled the worker.
Label values must be names the current config knows (else `other`) and error types must come
from `tollway.core.errors.error_label`'s closed vocabulary (else `upstream_error`).
"""
from __future__ import annotations

import ast
import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.otlp_collector import FakeCollector
from tests.harness import ROOT, TEST_KEY, GatewayProcess, ThreadedServer, key_hash
from tollway.core.config import Config, Model, Provider, Target
from tollway.core.errors import ERROR_LABEL_FALLBACK, GATEWAY_ERROR_CODES, OPENAI_ERROR_TYPES, error_label
from tollway.core.security.keys import hash_key
from tollway.gateway.telemetry.metrics import OTHER, MetricLabels, Metrics

SCRAPE_KEY = "scrape-credential-0123456789abcdef"
PEPPER = "metrics-test-pepper"
LONG = 50_000  # characters in each attacker model name, as in the report


class TinyUpstream:
    """An OpenAI-compatible upstream that answers chat with usage, or, for model `weird-error`,
    a 400 whose error `type` and `code` are whatever the test put in `error`."""

    def __init__(self) -> None:
        self.error: dict[str, str] = {}
        self.server = ThreadedServer(self._app)
        self.url = f"http://127.0.0.1:{self.server.port}/v1"

    def _app(self) -> Any:
        from aiohttp import web

        async def chat(request: web.Request) -> web.Response:
            body = await request.json()
            if body["model"] == "weird-error":
                return web.json_response({"error": {"message": "no", "param": None, **self.error}}, status=400)
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "whatever-it-likes",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            })

        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", chat)
        return app


def _config(upstream: str, collector: str, server: str = "", models: str = "") -> str:
    return f"""
providers:
  - {{name: up, schema: openai, base_url: "{upstream}"}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: weird-error, targets: [{{provider: up}}]}}
  - {{name: probe, match: "probe-.*", targets: [{{provider: up}}]}}
{models}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  retry: {{attempts: 1}}
telemetry:
  traces: {{endpoint: "{collector}", export_interval: 0.1}}
server:
  reload_check_interval: 0
{server}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[TinyUpstream]:
    fake = TinyUpstream()
    yield fake
    fake.server.stop()


@pytest.fixture(scope="module")
def collector() -> Iterator[FakeCollector]:
    fake = FakeCollector()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(upstream: TinyUpstream, collector: FakeCollector) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(_config(upstream.url, collector.url))
    yield gateway
    gateway.stop()


def _chat(conn: http.client.HTTPConnection, model: str, rid: str = "") -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    headers = {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body, {**headers, **({"x-request-id": rid} if rid else {})})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _connect(gw: GatewayProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)


def _scrape(gw: GatewayProcess, authorization: str | None = None) -> tuple[bytes, float]:
    """The exposition and how long the scrape took."""
    request = urllib.request.Request(gw.url + "/metrics", headers={"authorization": authorization} if authorization else {})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as r:
        return r.read(), time.perf_counter() - start


def _samples(text: bytes) -> list[Any]:
    return [s for f in text_string_to_metric_families(text.decode()) for s in f.samples]


# -- end to end: a match route fed distinct long names ---------------------------------------

def test_distinct_long_model_names_on_a_match_route_do_not_grow_metrics(gw):
    conn = _connect(gw)
    assert _chat(conn, "probe-warm-up") == 200  # the route's series exist before the measure
    before, _ = _scrape(gw)
    for i in range(200):
        assert _chat(conn, f"probe-{i:03d}-" + os.urandom(LONG // 2).hex()) == 200
    conn.close()
    after, seconds = _scrape(gw)

    # 200 requests changed counts, not series: a few digits more, never one more name.
    assert len(after) <= len(before) + 4096, (len(before), len(after))
    assert seconds < 1.0, f"a scrape took {seconds:.2f} s"
    samples = _samples(after)
    assert max(len(v) for s in samples for v in s.labels.values()) <= 64
    usage = [s for s in samples if s.name == "gen_ai_client_token_usage_count"
             and s.labels["gen_ai_request_model"] == "probe"]
    assert usage and {s.labels["gen_ai_response_model"] for s in usage} == {OTHER}
    assert sum(s.value for s in usage) >= 2 * 201  # input and output, every request counted
    requests = [s for s in samples if s.name == "tollway_requests_total" and s.labels["model"] == "probe"]
    assert requests and requests[0].value >= 201 and requests[0].labels["provider"] == "up"


# -- end to end: an upstream's own error type and code ----------------------------------------

def test_an_upstream_error_type_and_code_reach_no_sink_as_they_are(gw, upstream, collector):
    weird_type, weird_code = "t" + os.urandom(5000).hex(), "c" + os.urandom(5000).hex()
    upstream.error = {"type": weird_type, "code": weird_code}
    rid = "req-weird-" + os.urandom(4).hex()
    conn = _connect(gw)
    assert _chat(conn, "weird-error", rid) == 400  # the client still gets the upstream's answer
    conn.close()

    text, _ = _scrape(gw)
    assert weird_type[:40].encode() not in text and weird_code[:40].encode() not in text
    durations = [s for s in _samples(text) if s.name == "gen_ai_server_request_duration_seconds_count"
                 and s.labels["gen_ai_request_model"] == "weird-error"]
    assert [s.labels["error_type"] for s in durations] == [ERROR_LABEL_FALLBACK]

    line = _log_line(gw, rid)
    assert line["error"] == ERROR_LABEL_FALLBACK and line["status"] == 400
    assert weird_code[:40] not in gw.raw_output() and weird_type[:40] not in gw.raw_output()

    spans = collector.wait_for(lambda s: s["attrs"].get("tollway.request_id") == rid)  # the SERVER span
    assert spans and spans[0]["attrs"]["error.type"] == ERROR_LABEL_FALLBACK
    assert all(weird_code[:40].encode() not in body and weird_type[:40].encode() not in body for body in collector.bodies)


def test_a_known_upstream_error_code_is_kept(gw, upstream, collector):
    upstream.error = {"type": "invalid_request_error", "code": "context_length_exceeded"}
    rid = "req-known-" + os.urandom(4).hex()
    conn = _connect(gw)
    assert _chat(conn, "weird-error", rid) == 400
    conn.close()
    assert _log_line(gw, rid)["error"] == "context_length_exceeded"
    spans = collector.wait_for(lambda s: s["attrs"].get("tollway.request_id") == rid)
    assert spans and spans[0]["attrs"]["error.type"] == "context_length_exceeded"
    text, _ = _scrape(gw)
    assert any(s.labels.get("error_type") == "context_length_exceeded" for s in _samples(text))


def _log_line(gw: GatewayProcess, rid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [line for line in gw.log_lines() if line.get("request_id") == rid]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {rid}")


# -- end to end: the allowed names follow a hot reload ----------------------------------------

def test_label_values_and_metrics_auth_follow_a_reload(upstream, collector):
    gw = GatewayProcess(_config(upstream.url, collector.url))
    try:
        conn = _connect(gw)
        assert _chat(conn, "late-model") == 404
        assert _scrape(gw)[0]  # open before the reload
        gw.config_path.write_text(_config(upstream.url, collector.url, models=(
            "  - {name: late-model, targets: [{provider: up, model: late-upstream}]}"),
            server=f"  metrics_auth: {{key_hash: \"{hash_key(SCRAPE_KEY)}\"}}"))
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in gw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _chat(conn, "late-model") == 200
        conn.close()
        with pytest.raises(urllib.error.HTTPError) as refused:  # the reload turned metrics_auth on
            _scrape(gw)
        assert refused.value.code == 401
        samples = _samples(_scrape(gw, f"Bearer {SCRAPE_KEY}")[0])
        assert any(s.name == "tollway_requests_total" and s.labels["model"] == "late-model" for s in samples)
        assert any(s.labels.get("gen_ai_response_model") == "late-upstream" for s in samples)
        assert any(s.labels.get("model") == "unknown" and s.labels.get("status") == "404" for s in samples)
    finally:
        gw.stop()


# -- end to end: server.metrics_auth ----------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(upstream: TinyUpstream, collector: FakeCollector) -> Iterator[GatewayProcess]:
    """A gateway whose /metrics needs SCRAPE_KEY, hashed with the server's pepper."""
    server = f"  key_pepper: {PEPPER}\n  metrics_auth: {{key_hash: \"{hash_key(SCRAPE_KEY, PEPPER)}\"}}"
    gateway = GatewayProcess(_config(upstream.url, collector.url, server=server))
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-credential", f"Bearer {TEST_KEY}",
                                           f"Basic {SCRAPE_KEY}", SCRAPE_KEY, f"Bearer {SCRAPE_KEY}x"])
def test_metrics_auth_refuses_anything_but_the_scrape_credential(guarded, authorization):
    with pytest.raises(urllib.error.HTTPError) as refused:
        _scrape(guarded, authorization)
    assert refused.value.code == 401 and refused.value.headers["x-request-id"]
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert "metrics" in error["message"] and SCRAPE_KEY not in json.dumps(error)


def test_metrics_auth_lets_the_scrape_credential_in(guarded):
    text, _ = _scrape(guarded, f"Bearer {SCRAPE_KEY}")
    assert b"tollway_requests_total" in text or b"# TYPE tollway_requests" in text
    urllib.request.urlopen(guarded.url + "/healthz", timeout=5).read()  # only /metrics is guarded


def test_metrics_is_open_without_metrics_auth(gw):
    text, _ = _scrape(gw)
    assert b"# TYPE gen_ai_client_token_usage" in text


# -- unit: Metrics bounds what it is given ----------------------------------------------------

def _labels(*models: str, upstream_models: tuple[str, ...] = ()) -> MetricLabels:
    targets = [Target(provider="up", model=u) for u in upstream_models] or [Target(provider="up")]
    return MetricLabels(Config(providers=[Provider(name="up", schema="openai", base_url="http://x/v1")],
                               models=[Model(name=m, targets=targets) for m in models]))


def _observe(metrics: Metrics, model: str, response_model: str = "", error_type: str = "", provider: str = "up") -> None:
    metrics.observe(operation="chat", provider="openai", model=model, response_model=response_model, status=200,
                    seconds=0.01, error_type=error_type, input_tokens=1, output_tokens=1, provider_name=provider,
                    overhead=0.001)


def test_metrics_keep_configured_names_and_call_the_rest_other():
    current = _labels("gpt-4o", upstream_models=("gpt-4o-2024-08-06",))
    metrics = Metrics(lambda: current)
    _observe(metrics, "gpt-4o", "gpt-4o-2024-08-06")
    _observe(metrics, "x" * 10_000, "y" * 10_000, "z" * 10_000, "p" * 10_000)
    samples = _samples(metrics.exposition())
    usage = {(s.labels["gen_ai_request_model"], s.labels["gen_ai_response_model"])
             for s in samples if s.name == "gen_ai_client_token_usage_count"}
    assert usage == {("gpt-4o", "gpt-4o-2024-08-06"), (OTHER, OTHER)}
    assert {s.labels["provider"] for s in samples if s.name == "tollway_requests_total"} == {"up", OTHER}
    assert {s.labels["provider"] for s in samples if s.name == "tollway_gateway_overhead_seconds_count"} == {"up", OTHER}
    assert {s.labels["error_type"] for s in samples if s.name.startswith("gen_ai_server_request_duration")} \
        == {"", ERROR_LABEL_FALLBACK}

    current = _labels("claude")  # what a reload does: the runtime, and its names, change
    _observe(metrics, "gpt-4o", "gpt-4o-2024-08-06")
    _observe(metrics, "claude", "claude")
    usage = {(s.labels["gen_ai_request_model"], s.labels["gen_ai_response_model"])
             for s in _samples(metrics.exposition()) if s.name == "gen_ai_client_token_usage_count"}
    assert ("claude", "claude") in usage and usage - {("claude", "claude")} == {("gpt-4o", "gpt-4o-2024-08-06"), (OTHER, OTHER)}


def test_a_metrics_without_a_config_names_nothing():
    metrics = Metrics()
    _observe(metrics, "gpt-4o", "gpt-4o")
    models = {s.labels.get("model") for s in _samples(metrics.exposition()) if s.name == "tollway_requests_total"}
    assert models == {OTHER}


def test_ttft_model_is_bounded_too():
    metrics = Metrics(lambda: _labels("gpt-4o"))
    metrics.observe_ttft("chat", "openai", "gpt-4o", 0.1)
    metrics.observe_ttft("chat", "openai", "q" * 10_000, 0.1)
    models = {s.labels["gen_ai_request_model"] for s in _samples(metrics.exposition())
              if s.name == "gen_ai_server_time_to_first_token_seconds_count"}
    assert models == {"gpt-4o", OTHER}


# -- unit: error_label ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["upstream_timeout", "client_closed", "rate_limit_exceeded", "invalid_api_key",
                                   "insufficient_quota", "server_error", "rate_limit_error", "tokens", "502", "429"])
def test_error_label_keeps_the_vocabulary(value):
    assert error_label(value) == value


@pytest.mark.parametrize("value", ["x" * 50_000, "Upstream_Timeout", "upstream_timeout ", "my_custom_code",
                                   "\u0665\u0660\u0662", "50", "5020", "<script>", "sk-abcdef123456"])
def test_error_label_maps_anything_else_to_the_fallback(value):
    assert error_label(value) == ERROR_LABEL_FALLBACK


def test_error_label_keeps_no_error_empty():
    assert error_label("") == ""


def test_the_fallback_is_in_the_vocabulary_and_every_value_is_short():
    assert error_label(ERROR_LABEL_FALLBACK) == ERROR_LABEL_FALLBACK
    assert all(len(v) <= 40 and v.isascii() for v in GATEWAY_ERROR_CODES | OPENAI_ERROR_TYPES)


def test_every_code_the_gateway_sets_is_in_the_vocabulary():
    """A new error code must be added to tollway.core.errors.GATEWAY_ERROR_CODES, or every sink would
    report it as the fallback: this reads the source for the codes it sets."""
    from tollway.core.providers.upstream_errors import _BY_STATUS

    found = _codes_in_source() | {code for _, kind, code in _BY_STATUS.values() for code in (kind, code)}
    assert found >= {"upstream_timeout", "client_closed", "model_not_found", "rate_limit_exceeded"}  # the scan works
    assert not {c for c in found if error_label(c) != c}, "add these to tollway.core.errors.GATEWAY_ERROR_CODES"


def _codes_in_source() -> set[str]:
    """String constants given as a GatewayError's type or code, assigned to an `error_type`, or
    assigned to a name ending in `code`/`type` (limits' `err_type, code = ...`)."""
    found: set[str] = set()
    for path in [*Path(ROOT, "core").rglob("*.py"), *Path(ROOT, "gateway").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _called(node) in ("GatewayError", "__init__"):
                found |= {a.value for a in node.args[2:4] if _is_str(a)}
                found |= {k.value.value for k in node.keywords if k.arg in ("type", "code") and _is_str(k.value)}
            elif isinstance(node, ast.Call) and _called(node) == "bad_request":
                found |= {k.value.value for k in node.keywords if k.arg == "code" and _is_str(k.value)}
            elif isinstance(node, ast.Assign) and any(_names_a_code(t) for t in node.targets):
                found |= {c.value for c in ast.walk(node.value) if _is_str(c)}
    return found


def _called(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _names_a_code(target: ast.AST) -> bool:
    names = [t for t in ast.walk(target) if isinstance(t, (ast.Name, ast.Attribute))]
    return any((n.id if isinstance(n, ast.Name) else n.attr) in ("error_type", "err_type", "code") for n in names)

"""Trace context, sampling, OTLP JSON encoding and the span exporter, without a gateway process."""
from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from tollway.core import config
from tollway.core.config import ConfigError, Traces
from tollway.core.telemetry.otlp import CLIENT, SERVER, STATUS_ERROR, Span, export_request
from tollway.core.telemetry.tracecontext import (
    Parent,
    clean_tracestate,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    sampled,
)
from tollway.gateway.telemetry.metrics import Metrics
from tollway.gateway.telemetry.trace_export import SpanExporter
from tollway.gateway.telemetry.tracing import server_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


# -- traceparent -------------------------------------------------------------------------

def test_a_valid_traceparent_names_its_trace_span_and_flag():
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01") == Parent(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == Parent(TRACE, SPAN, False)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-03").sampled  # other flag bits do not hide sampled


@pytest.mark.parametrize("value", [
    None, "", "garbage",
    f"00-{TRACE}-{SPAN}",                      # no flags
    f"00-{TRACE.upper()}-{SPAN}-01",           # upper-case hex is invalid
    f"00-{TRACE}-{SPAN}-0g",                   # not hex
    f"00_{TRACE}-{SPAN}-01",                   # wrong separator
    f"00-{'0' * 32}-{SPAN}-01",                # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",               # all-zero parent id
    f"ff-{TRACE}-{SPAN}-01",                   # version ff is forbidden
    f"00-{TRACE}-{SPAN}-01-extra",             # version 00 has exactly four fields
    f"01-{TRACE}-{SPAN}-01extra",              # a later version extends only with "-"
])
def test_a_malformed_traceparent_is_ignored(value):
    assert parse_traceparent(value) is None


def test_a_later_version_may_carry_more_fields():
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds") == Parent(TRACE, SPAN, True)


def test_traceparent_round_trips():
    assert parse_traceparent(format_traceparent(TRACE, SPAN, True)) == Parent(TRACE, SPAN, True)
    assert format_traceparent(TRACE, SPAN, False).endswith("-00")


def test_tracestate_passes_unless_it_could_break_a_header():
    assert clean_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert clean_tracestate("a=b\r\nx-evil: 1") == ""
    assert clean_tracestate("a=" + "b" * 600) == ""
    assert clean_tracestate(None) == ""


# -- sampling ----------------------------------------------------------------------------

def test_the_parent_flag_decides_whatever_the_ratio():
    assert sampled(TRACE, 0.0, Parent(TRACE, SPAN, True))
    assert not sampled(TRACE, 1.0, Parent(TRACE, SPAN, False))


def test_new_traces_follow_the_ratio_by_their_id():
    low, high = "f" * 16 + "0" * 16, "0" * 16 + "f" * 16
    assert sampled(low, 0.5, None) and not sampled(high, 0.5, None)
    assert sampled(high, 1.0, None) and not sampled(low, 0.0, None)
    ids = [f"{i:016x}{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}" for i in range(4000)]
    share = sum(sampled(t, 0.25, None) for t in ids) / len(ids)
    assert 0.2 < share < 0.3


# -- OTLP JSON -------------------------------------------------------------------------

def test_a_span_encodes_in_the_otlp_json_mapping():
    span = Span(TRACE, SPAN, "1111111111111111", "chat gpt-4o", SERVER, 1_700_000_000_123_456_789,
                1_700_000_001_000_000_000, [("gen_ai.request.model", "gpt-4o"), ("gen_ai.usage.input_tokens", 12),
                                            ("gen_ai.request.stream", True), ("ratio", 0.5)],
                STATUS_ERROR, "server_error", "rojo=1")
    child = Span(TRACE, "2222222222222222", SPAN, "chat gpt-4o", CLIENT, 1, 2, [])
    doc = json.loads(export_request([span, child], [("service.name", "tollway")], ("tollway", "0.1.0")))
    rs = doc["resourceSpans"][0]
    assert rs["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "tollway"}}]
    scope = rs["scopeSpans"][0]
    assert scope["scope"] == {"name": "tollway", "version": "0.1.0"}
    out, client = scope["spans"]
    assert out["traceId"] == TRACE and out["spanId"] == SPAN and out["parentSpanId"] == "1111111111111111"
    assert (out["name"], out["kind"], client["kind"]) == ("chat gpt-4o", 2, 3)
    assert out["startTimeUnixNano"] == "1700000000123456789" and out["endTimeUnixNano"] == "1700000001000000000"
    assert out["attributes"] == [
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
        {"key": "gen_ai.request.stream", "value": {"boolValue": True}},
        {"key": "ratio", "value": {"doubleValue": 0.5}},
    ]
    assert out["status"] == {"code": 2, "message": "server_error"} and out["traceState"] == "rojo=1"
    assert "status" not in client and "parentSpanId" in client and "traceState" not in client


def test_server_of_keeps_host_and_port_only():
    assert server_of("https://user:pw@api.example.com/v1/chat?key=SECRET") == ("api.example.com", 443)
    assert server_of("http://10.0.0.5:8000/v1/chat/completions") == ("10.0.0.5", 8000)
    assert server_of("http://[::1]:9/x") == ("::1", 9)
    assert server_of("not a url") == ("", 0)


# -- config ------------------------------------------------------------------------------

def _traces(body: str, env: dict[str, str] | None = None) -> Traces | None:
    return config.loads(f"telemetry:\n  traces:\n{body}", env or {}).telemetry.traces


def test_traces_decode_with_defaults_and_env_headers():
    t = _traces("    endpoint: http://127.0.0.1:4318/v1/traces\n    headers: {authorization: \"Bearer ${OTEL_TOKEN}\"}\n",
                {"OTEL_TOKEN": "tok"})
    assert t == Traces("http://127.0.0.1:4318/v1/traces", headers={"authorization": "Bearer tok"})
    assert (t.service_name, t.sample_ratio, t.export_interval, t.max_queue) == ("tollway", 1.0, 1.0, 2048)
    assert config.loads("models: []").telemetry.traces is None  # absent: off


@pytest.mark.parametrize("body, message", [
    ("    endpoint: grpc://127.0.0.1:4317\n", "telemetry.traces.endpoint: endpoint must be an http:// or https:// URL with a host (line 3)"),
    ("    endpoint: http://\n", "telemetry.traces.endpoint: endpoint must be an http:// or https:// URL with a host (line 3)"),
    # urlsplit takes these, but `.port` raises: the exporter would crash at startup or mid-reload
    ("    endpoint: http://otel:431888/v1/traces\n", "telemetry.traces.endpoint: the port must be a number from 1 to 65535 (line 3)"),
    ("    endpoint: http://otel:abc/v1/traces\n", "telemetry.traces.endpoint: the port must be a number from 1 to 65535 (line 3)"),
    ("    endpoint: \"http://[::1/v1/traces\"\n", "telemetry.traces.endpoint: endpoint must be an http:// or https:// URL with a host (line 3)"),
    ("    endpoint: http://:4318/v1/traces\n", "telemetry.traces.endpoint: endpoint must be an http:// or https:// URL with a host (line 3)"),
    ("    endpoint: http://c:4318/v1/traces\n    sample_ratio: 1.5\n", "telemetry.traces.sample_ratio: must be between 0 and 1 (line 4)"),
    ("    endpoint: http://c:4318/v1/traces\n    export_interval: 0\n", "telemetry.traces.export_interval: must be > 0 seconds (line 4)"),
    ("    endpoint: http://c:4318/v1/traces\n    max_queue: 0\n", "telemetry.traces.max_queue: must be at least 1 (line 4)"),
    ("    endpoint: http://c:4318/v1/traces\n    colour: red\n", "telemetry.traces.colour: unknown field 'colour' (line 4)"),
    ("    service_name: x\n", "telemetry.traces: Object missing required field `endpoint` (line 3)"),
])
def test_bad_traces_sections_name_field_and_line(body, message):
    with pytest.raises(ConfigError) as err:
        _traces(body)
    assert str(err.value) == message


def test_a_bad_header_value_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as err:
        _traces("    endpoint: http://c:4318/v1/traces\n    headers: {authorization: \"Bearer ${T}\"}\n", {"T": "sec\nret"})
    assert err.value.path == "telemetry.traces.headers.authorization" and "sec" not in str(err.value)


# -- the exporter --------------------------------------------------------------------------

class _Answer:
    def __init__(self, status: int) -> None:
        self.status = status

    async def read(self, limit: int | None = None) -> bytes:
        return b"{}"

    def close(self) -> None:
        pass


class _Collector:
    """Stands in for the exporter's HTTP client: records bodies, or fails while `down`."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[list[tuple[str, str]]] = []
        self.down = False

    async def request(self, method, url, headers, body, timeouts):
        from tollway.gateway.upstream.client import UpstreamConnectError

        if self.down:
            raise UpstreamConnectError("cannot connect to upstream c:4318: Connection refused")
        self.bodies.append(body)
        self.headers.append(headers)
        return _Answer(200)

    async def aclose(self) -> None:
        pass


def _span(i: int = 0) -> Span:
    return Span(TRACE, f"{i + 1:016x}", "", "chat m", SERVER, 1, 2, [])


def _exporter(collector: _Collector, metrics: Metrics, **kw) -> SpanExporter:
    traces = Traces("http://c:4318/v1/traces", headers={"authorization": "Bearer T0KEN"}, **kw)
    return SpanExporter(traces, metrics, collector)


def _value(metrics: Metrics, name: str, label: str) -> float:
    return metrics.registry.get_sample_value(name, {"reason" if "dropped" in name else "outcome": label}) or 0.0


def test_a_full_queue_drops_and_counts():
    metrics = Metrics()
    exporter = _exporter(_Collector(), metrics, max_queue=3)
    for i in range(5):
        exporter.add(_span(i))
    assert len(exporter.queue) == 3
    assert _value(metrics, "tollway_trace_spans_dropped_total", "queue_full") == 2


def test_batches_post_with_headers_and_a_dead_collector_is_logged_once_per_incident(caplog):
    metrics, collector = Metrics(), _Collector()
    exporter = _exporter(collector, metrics)

    async def scenario() -> None:
        for i in range(600):
            exporter.add(_span(i))
        await exporter.export_queued()  # 512 + 88
        collector.down = True
        for _ in range(3):
            exporter.add(_span())
            await exporter.export_queued()
        collector.down = False
        exporter.add(_span())
        await exporter.export_queued()

    with caplog.at_level(logging.INFO, logger="tollway"):
        asyncio.run(scenario())
    assert [len(json.loads(b)["resourceSpans"][0]["scopeSpans"][0]["spans"]) for b in collector.bodies] == [512, 88, 1]
    assert ("content-type", "application/json") in collector.headers[0]
    assert ("authorization", "Bearer T0KEN") in collector.headers[0]
    assert _value(metrics, "tollway_trace_exports_total", "failed") == 3
    assert _value(metrics, "tollway_trace_spans_dropped_total", "export_failed") == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "failing" in lines[0] and "c:4318" in lines[0] and "works again" in lines[1]
    assert not any("T0KEN" in line for line in lines)


def test_close_flushes_the_queue_within_its_deadline():
    metrics, collector = Metrics(), _Collector()
    exporter = _exporter(collector, metrics, export_interval=60)

    async def scenario() -> None:
        exporter.start(asyncio.get_running_loop())
        exporter.add(_span())
        await exporter.close(1.0)

    asyncio.run(scenario())
    assert len(collector.bodies) == 1 and exporter.queue == []


def test_a_collector_answer_that_never_ends_is_not_read_to_its_end():
    # Only the status matters: a wrong or hostile endpoint's endless 200 body was buffered whole
    # (a worker at 855 MB for one export) until the 10 s total timeout failed the batch.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                await writer.drain()
        except (ConnectionError, RuntimeError):
            writer.close()

    async def scenario() -> tuple[str, float]:
        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        exporter = SpanExporter(Traces(f"http://127.0.0.1:{port}/v1/traces"), Metrics())
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            problem = await exporter._post(b"{}")
            return problem, loop.time() - start
        finally:
            await exporter.close(1.0)
            server.close()

    problem, took = asyncio.run(scenario())
    assert problem == "" and took < 2.0  # taken (a 200), and no more of the body read than its cap


class _Stuck(_Collector):
    """A collector that takes the request and never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.posting = asyncio.Event()

    async def request(self, method, url, headers, body, timeouts):
        self.posting.set()
        await asyncio.sleep(3600)


def test_a_batch_cut_off_mid_post_by_close_is_counted_as_shutdown():
    metrics, collector = Metrics(), _Stuck()
    exporter = _exporter(collector, metrics, export_interval=0.01)

    async def scenario() -> None:
        exporter.start(asyncio.get_running_loop())
        for i in range(3):
            exporter.add(_span(i))
        await collector.posting.wait()  # the task took the batch off the queue and is posting it
        exporter.add(_span(3))
        await exporter.close(0.05)  # cancels the post; the flush of span 3 then times out as well

    asyncio.run(scenario())
    assert _value(metrics, "tollway_trace_spans_dropped_total", "shutdown") == 4


def test_a_close_deadline_expiring_mid_post_counts_the_batch_as_shutdown():
    metrics = Metrics()
    exporter = _exporter(_Stuck(), metrics)

    async def scenario() -> None:
        for i in range(2):
            exporter.add(_span(i))
        await exporter.close(0.05)  # never started: close's own flush is what gets stuck

    asyncio.run(scenario())
    assert _value(metrics, "tollway_trace_spans_dropped_total", "shutdown") == 2


def test_a_span_added_after_close_is_counted_not_queued():
    """A request that began before a reload ends on the exporter it began with, closed by then."""
    metrics = Metrics()
    exporter = _exporter(_Collector(), metrics)
    asyncio.run(exporter.close(0.05))
    exporter.add(_span())
    assert exporter.queue == []
    assert _value(metrics, "tollway_trace_spans_dropped_total", "shutdown") == 1


# -- the tracer ------------------------------------------------------------------------------

class _Headers:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, name: str):
        return next((v for k, v in self.pairs if k == name), None)

    def get_all(self, name: str):
        return [v for k, v in self.pairs if k == name]


def _tracer(ratio: float = 1.0):
    from tollway.gateway.telemetry.tracing import Tracer

    exporter = _exporter(_Collector(), Metrics())
    return Tracer(Traces("http://c:4318/v1/traces", sample_ratio=ratio), exporter), exporter


def test_an_unsampled_caller_propagates_flag_00_and_records_nothing():
    from tollway.gateway.exchange import Exchange

    tracer, exporter = _tracer()
    trace = tracer.begin(_Headers([("traceparent", f"00-{TRACE}-{SPAN}-00"), ("tracestate", "a=1"), ("tracestate", "b=2")]))
    attempt = trace.attempt()
    assert attempt.head == f"traceparent: 00-{TRACE}-{attempt.span_id}-00\r\ntracestate: a=1,b=2\r\n".encode()
    ex = Exchange("req-1", "chat")
    trace.end_attempt(attempt, ex, None, "m")
    trace.finish(ex)
    assert exporter.queue == []


def test_a_new_trace_gets_fresh_ids_and_no_tracestate():
    tracer, _ = _tracer(ratio=0.0)
    one, two = tracer.begin(_Headers([("tracestate", "a=1")])), tracer.begin(_Headers([]))
    assert one.trace_id != two.trace_id and re.fullmatch(r"[0-9a-f]{32}", one.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", one.span_id) and one.parent_id == "" and one.state == ""
    assert not one.sampled and b"tracestate" not in one.attempt().head


def test_new_ids_are_lower_hex_of_the_right_length_and_never_repeat():
    traces = {new_trace_id() for _ in range(5000)}
    spans = {new_span_id() for _ in range(5000)}
    assert len(traces) == 5000 and len(spans) == 5000
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) and t != "0" * 32 for t in traces)
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) and s != "0" * 16 for s in spans)
    assert parse_traceparent(format_traceparent(next(iter(traces)), next(iter(spans)), True)) is not None


def test_client_chosen_strings_are_cut_short_in_both_spans():
    from tollway.gateway.exchange import Exchange

    tracer, exporter = _tracer()
    trace = tracer.begin(_Headers([]))
    ex, long = Exchange("req-1", "chat"), "x" * 1_000_000
    ex.model = ex.upstream_model = long  # a route passing the client's model through
    ex.status, ex.error_type = 502, "e" * 1_000_000  # an upstream's error code, say

    class Provider:
        name, otel_name = "up", "openai"

    attempt = trace.attempt()
    attempt.error = ex.error_type
    trace.end_attempt(attempt, ex, Provider(), long)
    trace.finish(ex)
    client, server = exporter.queue
    for span in (client, server):
        assert len(span.name) <= 300 and span.name.endswith("\u2026")
        assert all(len(v) <= 256 for _, v in span.attributes if isinstance(v, str)), span.attributes
        assert len(span.status_message) <= 256
    assert dict(server.attributes)["gen_ai.request.model"] == "x" * 255 + "\u2026"


def test_no_character_that_could_break_a_header_line_survives_clean_tracestate():
    # The relayed tracestate goes upstream as a raw header line (gateway/upstream/client.py extra_head).
    for code in [*range(0x100), 0x2028, 0x85, 0xFEFF]:
        cleaned = clean_tracestate("vendor=" + chr(code))
        assert cleaned in ("", "vendor=" + chr(code))
        assert not cleaned or (32 <= code < 127), (code, cleaned)

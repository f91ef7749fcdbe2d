"""Spans for client requests and upstream attempts, in the OpenTelemetry GenAI conventions.

Theory of operation: with `telemetry.traces` configured the gateway holds a `Tracer`; without
it, `Gateway.tracer` is None and a request pays one None check where a span would begin, end
or be propagated. `Tracer.begin` reads the caller's `traceparent` (its trace continues; a
malformed one is ignored) and decides sampling once per trace. The request's `RequestTrace`
rides on its `Exchange`: the proxy asks it for an `Attempt` per upstream try (a CLIENT span,
and the `traceparent`/`tracestate` header lines that name that span upstream, so a tier-two
gateway continues the same trace), and the gateway ends the SERVER span in `_finish`. Spans of
unsampled traces are never built, but the context still propagates (flag 00), so the next tier
makes the same decision. Finished spans go to the `SpanExporter` queue (tollway.gateway.telemetry.trace_export).

What a span may hold is listed in `_server_span` and `_client_span` and nowhere else: names,
models, counts, statuses, error *types*, the key's configured name and the upstream host and
port. Never a prompt, a completion, a key, a header value or a URL's path or query. Model
names a client or an upstream chooses pass through `_text`, which cuts them to MAX_TEXT
characters: the export queue is bounded by span count, so a span must stay small. Error types
pass through `tollway.core.errors.error_label`, a closed vocabulary, as in the metrics and the log.
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING

from tollway.core.config import Traces
from tollway.core.errors import error_label
from tollway.core.providers.base import ClientAPI
from tollway.core.telemetry.otlp import CLIENT, SERVER, STATUS_ERROR, STATUS_OK, STATUS_UNSET, Attribute, Span
from tollway.core.telemetry.tracecontext import (
    clean_tracestate,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    sampled,
)
from tollway.gateway.telemetry.metrics import Metrics
from tollway.gateway.telemetry.trace_export import SpanExporter
from tollway.gateway.upstream.client import endpoint_of, split_url

if TYPE_CHECKING:
    from granian.rsgi import Headers

    from tollway.core.request import RequestHead
    from tollway.core.security.secrets import KnownSecrets
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.runtime import ProviderRuntime

MAX_TEXT = 256  # characters of a client-chosen string in a span; a model name may be 10 MB
# gen_ai.operation.name for each client API (the convention's well-known values; the
# Responses and Messages APIs are chat in its terms).
OPERATIONS = {
    ClientAPI.CHAT: "chat",
    ClientAPI.COMPLETIONS: "text_completion",
    ClientAPI.EMBEDDINGS: "embeddings",
    ClientAPI.RESPONSES: "chat",
    ClientAPI.MESSAGES: "chat",
}


def build_tracer(config: Traces | None, metrics: Metrics) -> Tracer | None:
    """The tracer for a `telemetry.traces` section; None (tracing off) without one."""
    return None if config is None else Tracer(config, SpanExporter(config, metrics))


class Tracer:
    """Starts the trace of each client request; one per gateway while tracing is on."""

    def __init__(self, config: Traces, exporter: SpanExporter) -> None:
        self.ratio = config.sample_ratio
        self.exporter = exporter

    def begin(self, headers: Headers) -> RequestTrace:
        """The trace of a request with these headers: the caller's, if it sent a valid one."""
        parent = parse_traceparent(headers.get("traceparent"))
        if parent is None:
            trace_id, parent_id, state = new_trace_id(), "", ""
        else:
            # repeated headers form one list (granian's Headers has get_all; its stub does not say so)
            state = clean_tracestate(",".join(headers.get_all("tracestate")))  # type: ignore[attr-defined]
            trace_id, parent_id = parent.trace_id, parent.span_id
        return RequestTrace(self.exporter, trace_id, parent_id, sampled(trace_id, self.ratio, parent), state)


class Attempt:
    """One upstream try: its CLIENT span's id and what the proxy learns while it runs."""

    __slots__ = ("number", "span_id", "start_ns", "head", "url", "status", "error")

    def __init__(self, number: int, span_id: str, head: bytes) -> None:
        self.number = number
        self.span_id = span_id
        self.start_ns = time.time_ns()
        self.head = head  # the header lines that carry this span's context upstream
        self.url = ""  # the URL called, read only for its host and port
        self.status = 0  # the upstream's HTTP status, once it answered
        self.error = ""  # the error type, if the attempt failed


class RequestTrace:
    """The trace context of one client request and the SERVER span it ends with."""

    __slots__ = ("exporter", "trace_id", "span_id", "parent_id", "sampled", "state", "attempts",
                 "max_tokens", "stream")

    def __init__(self, exporter: SpanExporter, trace_id: str, parent_id: str, sampled: bool, state: str) -> None:
        self.exporter = exporter  # the one it began with: a reload may swap the gateway's
        self.trace_id = trace_id
        self.span_id = new_span_id()
        self.parent_id = parent_id
        self.sampled = sampled
        self.state = state  # the caller's tracestate, relayed unchanged
        self.attempts = 0
        self.max_tokens: int | None = None
        self.stream: bool | None = None

    def request(self, head: RequestHead) -> None:
        """Note the request parameters the span reports."""
        self.max_tokens = head.output_limit
        self.stream = head.wants_stream

    def attempt(self) -> Attempt:
        """A new CLIENT span, child of this request's SERVER span."""
        self.attempts += 1
        span_id = new_span_id()
        head = f"traceparent: {format_traceparent(self.trace_id, span_id, self.sampled)}\r\n"
        if self.state:
            head += f"tracestate: {self.state}\r\n"
        return Attempt(self.attempts, span_id, head.encode("ascii"))

    def end_attempt(self, attempt: Attempt, ex: Exchange, provider: ProviderRuntime, upstream_model: str) -> None:
        """Record the attempt's CLIENT span (if the trace is sampled)."""
        if self.sampled:
            self.exporter.add(_client_span(self, attempt, ex, provider, upstream_model, time.time_ns()))

    def finish(self, ex: Exchange, secrets: KnownSecrets | None = None) -> None:
        """Record the request's SERVER span (if the trace is sampled). The client's text in it
        (model, request id) has every credential of `secrets` masked (see Exchange.log_record)."""
        if self.sampled:
            self.exporter.add(_server_span(self, ex, time.time_ns(), secrets))


def _server_span(trace: RequestTrace, ex: Exchange, end_ns: int, secrets: KnownSecrets | None = None) -> Span:
    op = OPERATIONS.get(ex.api, ex.api)
    mask = secrets.mask if secrets is not None else str
    attrs: list[Attribute] = [("gen_ai.operation.name", op)]
    if ex.provider is not None:
        attrs.append(("gen_ai.provider.name", ex.otel_provider))
    model = _text(mask(ex.model or ""))
    if model:
        attrs.append(("gen_ai.request.model", model))
    if ex.upstream_model:
        attrs.append(("gen_ai.response.model", _text(ex.upstream_model)))
    if trace.max_tokens is not None:
        attrs.append(("gen_ai.request.max_tokens", trace.max_tokens))
    if trace.stream is not None:
        attrs.append(("gen_ai.request.stream", trace.stream))
    _usage(attrs, ex)
    attrs.append(("http.response.status_code", ex.status))
    error = error_label(ex.error_type or (str(ex.status) if ex.status >= 400 else ""))
    if error:
        attrs.append(("error.type", error))
    attrs.append(("tollway.request_id", mask(ex.request_id)))
    if ex.key_name:
        attrs.append(("tollway.key", ex.key_name))
    attrs.append(("tollway.route", ex.route))
    attrs.append(("tollway.api", ex.api))
    # HTTP server convention: a 4xx is the caller's mistake, not the server's: status stays unset.
    status = STATUS_OK if not error else STATUS_UNSET if 400 <= ex.status < 500 else STATUS_ERROR
    start_ns = end_ns - int(ex.elapsed() * 1e9)
    return Span(trace.trace_id, trace.span_id, trace.parent_id, f"{op} {model}" if model else op, SERVER,
                start_ns, end_ns, attrs, status, error if status == STATUS_ERROR else "", trace.state)


def _client_span(trace: RequestTrace, attempt: Attempt, ex: Exchange, provider: ProviderRuntime, upstream_model: str,
                 end_ns: int) -> Span:
    op, upstream_model = OPERATIONS.get(ex.api, ex.api), _text(upstream_model)
    attrs: list[Attribute] = [
        ("gen_ai.operation.name", op), ("gen_ai.provider.name", provider.otel_name),
        ("gen_ai.request.model", upstream_model),
    ]
    host, port = server_of(attempt.url)
    if host:
        attrs.append(("server.address", host))
        attrs.append(("server.port", port))
    if attempt.status:
        attrs.append(("http.response.status_code", attempt.status))
    error = error_label(str(attempt.status) if attempt.status >= 400 else attempt.error or ex.error_type or "")
    if error:
        attrs.append(("error.type", error))
    else:
        _usage(attrs, ex)
    attrs.append(("tollway.attempt", attempt.number))
    attrs.append(("tollway.provider", provider.name))
    return Span(trace.trace_id, attempt.span_id, trace.span_id, f"{op} {upstream_model}", CLIENT,
                attempt.start_ns, end_ns, attrs, STATUS_ERROR if error else STATUS_OK, error, trace.state)


def _text(value: str) -> str:
    """`value`, or its first MAX_TEXT - 1 characters and "…" (so a cut one shows as cut)."""
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT - 1] + "\u2026"


def _usage(attrs: list[Attribute], ex: Exchange) -> None:
    u = ex.usage
    if u is not None:  # (each count within an int64: Usage holds them to 0..MAX_TOKENS)
        attrs.append(("gen_ai.usage.input_tokens", u.prompt_tokens))
        attrs.append(("gen_ai.usage.output_tokens", u.completion_tokens))


def server_of(url: str) -> tuple[str, int]:
    """(host, port) of an absolute URL; ("", 0) if it has none. Only the origin is parsed, so
    neither the path nor the query can reach a span."""
    try:
        origin, _ = split_url(url)  # the client's own split, so the span names what it called
    except ValueError:
        return "", 0
    return _origin(origin)


@lru_cache(maxsize=256)
def _origin(origin: str) -> tuple[str, int]:
    try:
        _, host, port = endpoint_of(origin)
    except ValueError:
        return "", 0
    return host, port

"""What the gateway remembers about one request, for its log line and metrics."""
from __future__ import annotations

import asyncio
import re
import time
from random import getrandbits
from typing import TYPE_CHECKING, Any

from tollway.core.errors import GatewayError, echoed, error_label
from tollway.core.ledger.periods import rfc3339
from tollway.ext.usage import Usage

if TYPE_CHECKING:
    from granian.rsgi import HTTPProtocol, Scope

    from tollway.core.accounting.pricebook import PriceBook
    from tollway.core.forms import Form
    from tollway.core.security.secrets import KnownSecrets
    from tollway.gateway.cache import CacheState, ResponseCache
    from tollway.gateway.guardrails.hooks import GuardrailState
    from tollway.gateway.pipeline import AfterResponse, OnAnswer, OnChunk, OnChunkAsync
    from tollway.gateway.plugins.hooks import PluginState
    from tollway.gateway.telemetry.tracing import RequestTrace

_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(client_value: str | None) -> str:
    """The client's x-request-id when it is sane (short, no odd characters), else a new one."""
    if client_value and _SANE_ID.fullmatch(client_value):
        return client_value
    # Unique, not secret (as trace ids, tollway.core.telemetry.tracecontext): `random`'s generator,
    # not os.urandom, a system call that also lets any other thread (the SQLite ledger's writer)
    # take the GIL in the middle of the request path. (bytes.hex: the same 24 digits as
    # f"{n:024x}", without parsing a format spec per request.)
    return "req_" + getrandbits(96).to_bytes(12, "big").hex()


class Exchange:
    __slots__ = ("request_id", "start", "ts", "api", "key_name", "key_id", "team", "model", "provider", "otel_provider",
                 "provider_schema", "upstream_model", "route", "status", "usage", "error_type", "stream", "first_byte",
                 "passed_headers", "trace", "proto", "scope", "phase", "watcher", "cancel_reason", "on_chunk",
                 "tags", "attempts", "cost_usd", "priced", "after", "prices", "on_chunk_async", "on_answer", "plugins",
                 "guardrails", "budget_held", "cache", "deferred",
                 "response_cache", "upstream_wait", "form")

    def __init__(self, rid: str, api: str) -> None:
        self.request_id = rid
        self.start = time.perf_counter()
        self.ts = time.time()  # when it arrived, for the ledger and the log line
        self.api = api
        self.key_name: str | None = None
        self.key_id: str | None = None
        self.team: str | None = None
        self.model: str | None = None
        self.provider: str | None = None
        self.provider_schema: str | None = None  # that provider's schema (the answer's wire format: registry.signs_thinking)
        self.otel_provider: str = "none"
        self.upstream_model: str | None = None
        self.route = "unknown"  # the configured model that served it: a bounded metric label
        self.status = 500
        self.usage: Usage | None = None
        self.error_type: str = ""
        self.stream = False
        self.first_byte: float | None = None
        self.passed_headers: tuple[tuple[str, str], ...] = ()  # see CallContext.passed_headers
        self.form: Form | None = None  # a multipart upload's, as admission read it (see CallContext.form)
        self.trace: RequestTrace | None = None  # set only while tracing is on (tollway.gateway.telemetry.tracing)
        # For tollway.gateway.downstream.watchdog: the client's protocol object, what the request is doing
        # ("body" while its body uploads), the watcher of its client (False: none possible),
        # and why it was cancelled (None: not, or by the drain).
        self.proto: HTTPProtocol | None = None
        self.scope: Scope | None = None  # granian's scope: its `client` address, for tollway.gateway.downstream.backpressure
        self.phase = ""
        self.watcher: asyncio.Future[Any] | bool | None = None
        self.cancel_reason: str | None = None
        self.on_chunk: tuple[OnChunk, ...] = ()  # the pipeline's per-chunk hooks (tollway.gateway.pipeline)
        self.tags: tuple[str, ...] = ()  # x-tollway-tags (tollway.core.ledger.tags)
        self.attempts = 0  # upstream attempts made
        self.cost_usd: float | None = 0.0  # None: the model has no price (tollway.core.accounting.pricebook)
        self.priced: Usage | None = None  # the usage cost_usd was worked out for (the answer's header)
        # The pipeline's after_response hooks, set once the key is known: the app runs them
        # when the request is finished, whatever ended it (tollway.gateway.pipeline).
        self.after: tuple[AfterResponse, ...] = ()
        self.prices: PriceBook | None = None  # the runtime's, once admitted: x-tollway-cost-usd
        self.on_chunk_async: tuple[OnChunkAsync, ...] = ()  # the pipeline's async per-chunk hooks
        self.on_answer: tuple[OnAnswer, ...] = ()  # ... and its hooks on a non-stream answer
        self.plugins: PluginState | None = None  # the request's plugin state, when plugins apply (tollway.gateway.plugins.hooks)
        self.guardrails: GuardrailState | None = None  # when guardrails apply (tollway.gateway.guardrails)
        self.response_cache: ResponseCache | None = None  # one opted in somewhere: a limit's refusal asks it (admission)
        self.deferred: GatewayError | None = None  # a limit's or budget's 429 that waits for a cache lookup (admission)
        self.budget_held = 0.0  # USD its stream holds of its budgets until charged (tollway.gateway.store.budgets)
        self.cache: CacheState | None = None  # on a cached route (tollway.gateway.cache)
        self.upstream_wait = 0.0  # seconds waiting for upstreams (and retry backoff): not the gateway's time

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def overhead(self) -> float:
        """Seconds of this request spent in the gateway so far: everything but its waits for
        upstreams (tollway_gateway_overhead_seconds)."""
        spent = time.perf_counter() - self.start - self.upstream_wait
        return 0.0 if spent < 0.0 else spent  # (max(spent, 0.0) without the generic call: once a request)

    def log_record(self, secrets: KnownSecrets | None = None) -> dict[str, object]:
        """The access log line. The client's text in it (request id, path, model) has every
        credential of `secrets` masked first, then is cut: a client may send one the gateway
        holds, and a cut copy would no longer be found whole."""
        u, scope = self.usage, self.scope
        mask = secrets.mask if secrets is not None else _as_is
        record: dict[str, object] = {
            "ts": rfc3339(self.ts), "request_id": mask(self.request_id), "key": self.key_name, "team": self.team,
            "api": self.api, "path": echoed(mask(scope.path)) if scope is not None else None,
            "client_ip": client_ip(scope.client) if scope is not None else None,
            "model": echoed(mask(self.model)) if self.model else self.model,  # client text: masked, cut
            "provider": self.provider,
            "upstream_model": echoed(self.upstream_model) if self.upstream_model else None, "status": self.status,
            "stream": self.stream, "error": error_label(self.error_type) or None,  # may be an upstream's code: log the closed set
            "prompt_tokens": u.prompt_tokens if u else None, "completion_tokens": u.completion_tokens if u else None,
            "latency_ms": round(self.elapsed() * 1000, 3),
            "ttfb_ms": round((self.first_byte - self.start) * 1000, 3) if self.first_byte else None,
            "cost_usd": self.cost_usd,
        }
        if self.guardrails is not None and self.guardrails.counts:  # detector names and counts, never a value
            record["guardrails"] = self.guardrails.counts
        if self.cache is not None:  # hit | miss | bypass, on a cached route (docs/cache.md)
            record["cache"] = self.cache.outcome
        return record


def _as_is(text: str) -> str:
    return text


def client_ip(peer: str | None) -> str | None:
    """The address of granian's `ip:port` (IPv6 `[::1]:port` or `::1:port`) without the port."""
    if not peer:
        return None
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host.strip("[]")

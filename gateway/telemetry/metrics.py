"""Prometheus metrics, named after the OpenTelemetry GenAI semantic conventions.

OTel names map to Prometheus by replacing dots with underscores and appending the unit:
`gen_ai.client.token.usage` -> `gen_ai_client_token_usage`,
`gen_ai.server.request.duration` (s) -> `gen_ai_server_request_duration_seconds`.
Bucket boundaries are the ones the conventions recommend. Each `Metrics` owns its own
registry, so several gateways in one process (tests) never share counters.

Every label value is bounded in length and in number: a series lives until the process ends,
so one label fed a client's or an upstream's string grows the registry and every scrape
without limit. Model and provider labels must be names the current config knows
(`MetricLabels`, rebuilt with the runtime on reload), else `other`; error types pass through
`tollway.core.errors.error_label`'s closed vocabulary. The other labels come from code or config.
"""
from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tollway.core import errors
from tollway.core.config import Config, Server
from tollway.core.errors import error_label
from tollway.core.security.keys import bearer_matches
from tollway.gateway.telemetry.process_metrics import FLUSH_SECONDS, SharedCounts, register_process_metrics, worker_pids
from tollway.gateway.telemetry.worker_gauges import Combine, WorkersGauges

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# The gateway's own share of a request: tens of microseconds at best, a few ms under load.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

disable_created_metrics()  # `_created` series double the exposition size and no dashboard reads them

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIMIT_DOC = "Rate-limit decisions by limit (bucket id) and decision (allowed|limited|stopped: a stream cut at the limit)."

_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
OTHER = "other"  # the label value of any name the config does not know
# Every status the HTTP parser admits, as label text: a dict get costs half a str() per request.
_STATUS_TEXT = {status: str(status) for status in range(100, 1000)}


class MetricLabels:
    """The model and provider label values one config allows. Built once per config (the
    Runtime holds one, so a reload swaps it with the routes); read per request."""

    __slots__ = ("models", "upstream_models", "providers", "teams")

    def __init__(self, config: Config) -> None:
        models = frozenset(m.name for m in config.models)
        self.models = models | {"unknown"}  # Exchange.route before a route was found (404, 401, ...)
        # A target without `model` sends the requested name upstream: on an exact route that is
        # the public name; on a `match:` route it is the client's string, so it counts as other.
        targets = frozenset(t.model for m in config.models for t in m.targets if t.model)
        self.upstream_models = models | targets | {""}  # "": no upstream was tried
        self.providers = frozenset(p.name for p in config.providers) | {"none"}  # "none": no provider was chosen
        self.teams = frozenset(t.name for t in config.teams) | {"none"}  # "none": a key without a team


_NO_NAMES = MetricLabels(Config())  # a Metrics that follows no config: every model and provider is `other`


class Metrics:
    def __init__(self, labels: Callable[[], MetricLabels] = lambda: _NO_NAMES) -> None:
        """`labels` returns the label values the current config allows; the gateway passes
        its runtime's, so a reload changes them with everything else."""
        self._labels = labels
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._scrape_time: list[Collector] = []
        # The per-request series. One worker: plain numbers rendered at scrape time (~1 us per
        # request instead of ~5 us through prometheus-client's locked values). --workers N:
        # prometheus-client's multiprocess files, so a scrape sums every worker.
        shared = bool(os.environ.get(MULTIPROC_ENV))
        self.requests = _series(shared, r, Counter, (
            "tollway_requests", "Client requests by public model, provider and HTTP status.",
            ("model", "provider", "status")))
        self.token_usage = _series(shared, r, Histogram, (
            "gen_ai_client_token_usage", "Tokens used per request (OTel gen_ai.client.token.usage).",
            (*_GENAI, "gen_ai_response_model", "gen_ai_token_type")), buckets=TOKEN_BUCKETS)
        self.duration = _series(shared, r, Histogram, (
            "gen_ai_server_request_duration_seconds", "Request duration (OTel gen_ai.server.request.duration).",
            (*_GENAI, "error_type")), buckets=DURATION_BUCKETS)
        self.ttft = _series(shared, r, Histogram, (
            "gen_ai_server_time_to_first_token_seconds",
            "Time to first streamed chunk (OTel gen_ai.server.time_to_first_token).", _GENAI), buckets=TTFT_BUCKETS)
        self.overhead = _series(shared, r, Histogram, (
            "tollway_gateway_overhead_seconds", "Time a request spent in the gateway, its waits for upstreams "
            "excluded, by API and provider (none: answered without one).", ("api", "provider")),
            buckets=OVERHEAD_BUCKETS)
        self.plugin_errors = Counter(
            "tollway_plugin_errors", "Plugin calls that failed, by plugin, stage and kind (timeout, exception, "
            "invalid_result, abandoned, dropped).", ("plugin", "stage", "kind"), registry=r,
        )
        self.guardrail_decisions = Counter(
            "tollway_guardrail_decisions", "Guardrail findings acted on, by guardrail, detector (regex for a regex "
            "guardrail) and action (block, mask, log).", ("guardrail", "detector", "action"), registry=r,
        )
        self.upstream_errors = Counter(
            "tollway_upstream_errors", "Failed upstream attempts by provider and kind.", ("provider", "kind"), registry=r,
        )
        self.trace_spans_dropped = Counter(
            "tollway_trace_spans_dropped", "Spans not exported, by reason (queue_full, export_failed, shutdown).",
            ("reason",), registry=r,
        )
        self.trace_exports = Counter(
            "tollway_trace_exports", "Span batches sent to the trace collector, by outcome (ok, failed).",
            ("outcome",), registry=r,
        )
        # Plain dict counts, exported at scrape time: a labelled Counter costs ~0.6 us per
        # bucket per request, this ~0.05 us (the event loop is the only writer). --workers N:
        # carried into the shared files off the request path (process_metrics.SharedCounts).
        self.limit_counts: dict[tuple[str, str], int] = defaultdict(int)
        self.shared_counts: SharedCounts | None = SharedCounts(r, self.limit_counts, _LIMIT_DOC) if shared else None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._worker_gauges: list[WorkersGauges] = []  # --workers N: scrape-time gauges of every worker
        if not shared:
            self.register(_LimitDecisions(self.limit_counts))
        register_process_metrics(r, shared, self.register)
        self.cost_usd = _series(shared, r, Counter, (
            "tollway_cost_usd", "Spend in USD by team, public model and provider (priced usage only).",
            ("team", "model", "provider")))
        self.team_tokens = _series(shared, r, Counter, (
            "tollway_tokens", "Tokens by team (none: keys without one), public model and type (input, output).",
            ("team", "model", "type")))
        self.unpriced_requests = _series(shared, r, Counter, (
            "tollway_unpriced_requests", "Requests whose model has no price: their cost is recorded as null.",
            ("model",)))
        self.cache_requests = _series(shared, r, Counter, (  # (tollway.gateway.cache; docs/cache.md)
            "tollway_cache_requests", "Requests of cached routes by public model and outcome (hit, miss, bypass).",
            ("model", "outcome")))
        self.cache_events = _series(shared, r, Counter, (
            "tollway_cache_events", "What the response cache did besides answering: single_flight_join (a miss "
            "answered by an identical request's upstream call), store (an entry written).", ("event",)))
        self.limit_store_errors = Counter(
            "tollway_rate_limit_store_errors", "Limit decisions made without the bucket store, by backend and on_store_error.",
            ("backend", "mode"), registry=r,
        )

    def observe(self, *, operation: str, provider: str, model: str, response_model: str, status: int,
                seconds: float, error_type: str, input_tokens: int, output_tokens: int, provider_name: str,
                overhead: float) -> None:
        """Record one finished request (called after the response is sent). `operation` and
        `provider` (the OTel name) come from code; the rest is bounded here."""
        names = self._labels()
        model = model if model in names.models else OTHER
        provider_name = provider_name if provider_name in names.providers else OTHER
        error_type = error_label(error_type)
        self.requests.add((model, provider_name, _STATUS_TEXT.get(status) or str(status)), 1)
        self.duration.add((operation, provider, model, error_type), seconds)
        self.overhead.add((operation, provider_name), overhead)
        if input_tokens or output_tokens:
            response_model = response_model if response_model in names.upstream_models else OTHER
            self.token_usage.add((operation, provider, model, response_model, "input"), input_tokens)
            self.token_usage.add((operation, provider, model, response_model, "output"), output_tokens)

    def observe_spend(self, team: str | None, model: str, provider: str | None, usd: float | None,
                      input_tokens: int, output_tokens: int) -> None:
        """A request's cost (None: its model has no price) and tokens by team and model."""
        names = self._labels()
        team = "none" if team is None else team if team in names.teams else OTHER
        model = model if model in names.models else OTHER
        if usd:
            self.cost_usd.add((team, model, provider if provider in names.providers else OTHER), usd)
        elif usd is None:
            self.unpriced_requests.add((model,), 1)
        if input_tokens or output_tokens:
            self.team_tokens.add((team, model, "input"), input_tokens)
            self.team_tokens.add((team, model, "output"), output_tokens)

    def observe_ttft(self, operation: str, provider: str, model: str, seconds: float) -> None:
        """Record a stream's time to its first chunk."""
        self.ttft.add((operation, provider, model if model in self._labels().models else OTHER), seconds)

    def live_families(self) -> list[Metric]:
        """The series the console's last hour is sampled from (tollway.gateway.telemetry.live):
        this worker's durations (and so requests), times to first token, tokens and cost."""
        out: list[Metric] = []
        for series in (self.duration, self.ttft, self.token_usage, self.cost_usd):
            collector = series.metric if isinstance(series, _Bound) else series
            out.extend(collector.collect())
        return out

    def limit_decision(self, limit: str, decision: str) -> None:
        """Count one rate-limit decision on one limit (bucket id): allowed or limited."""
        self.limit_counts[(limit, decision)] += 1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Multiprocess mode: carry this worker's plain counts into the shared files every
        FLUSH_SECONDS on `loop` (see process_metrics)."""
        if self.shared_counts is None:
            return

        def tick() -> None:
            self.flush_shared()
            self._flush_timer = loop.call_later(FLUSH_SECONDS, tick)

        self._flush_timer = loop.call_later(FLUSH_SECONDS, tick)

    def close(self) -> None:
        """Stop the flushing and flush what is left (the worker is exiting)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self.flush_shared()
        for gauges in self._worker_gauges:  # an exiting worker's gauges are no one's
            gauges.withdraw()

    def flush_shared(self) -> None:
        if self.shared_counts is not None:
            self.shared_counts.flush()
        for gauges in self._worker_gauges:
            gauges.publish()

    def exposition(self) -> bytes:
        """The Prometheus text of this worker, or of all workers in multiprocess mode.

        With `--workers N`, `tollway serve` sets PROMETHEUS_MULTIPROC_DIR before any worker
        starts, so counters and histograms are summed over every worker, whichever one
        answers the scrape (this worker's plain counts are flushed first, the others' are at
        most FLUSH_SECONDS old), and process_* over every worker's process. Gauges registered
        with `workers` rules (routing state, the ledger's queue) combine every worker's too.
        """
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry)
        self.flush_shared()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in self._scrape_time:
            registry.register(collector)
        return generate_latest(registry)

    def register(self, collector: Collector, workers: tuple[str, dict[str, Combine]] | None = None) -> None:
        """Add a collector computed at scrape time (state, not counts). `workers`, for gauges
        each worker has its own view of: a tag and each metric's rule to combine the workers'
        values with `--workers N` (tollway.gateway.telemetry.worker_gauges); without it the
        answering worker's view (or a view every worker shares, such as Redis's levels)."""
        self.registry.register(collector)
        directory = os.environ.get(MULTIPROC_ENV)
        if workers is not None and directory:
            tag, rules = workers
            gauges = WorkersGauges(collector, tag, rules, directory, worker_pids)
            self._worker_gauges.append(gauges)
            collector = gauges
        self._scrape_time.append(collector)


def authorize_scrape(server: Server, authorization: str | None) -> None:
    """Pass if `server.metrics_auth` is unset or `authorization` is `Bearer <credential>`
    whose hash it holds (hashed and compared as gateway keys are, pepper included). Raises
    a 401 otherwise. The server section is read per scrape, so a reload can set or change it."""
    auth = server.metrics_auth
    if auth is None:
        return
    if not bearer_matches(authorization, auth.key_hash, server.key_pepper):
        raise errors.unauthorized("/metrics needs the scrape credential as 'Authorization: Bearer <credential>'.")


class _LimitDecisions(Collector):
    """tollway_rate_limit_decisions_total{limit, decision} from the plain counts."""

    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self.counts = counts

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily("tollway_rate_limit_decisions", _LIMIT_DOC, labels=("limit", "decision"))
        for (limit, decision), count in list(self.counts.items()):
            family.add_metric((limit, decision), count)
        return [family]


def _series(shared: bool, registry: CollectorRegistry, kind: type, spec: tuple[str, str, tuple[str, ...]],
            buckets: Sequence[float] = ()) -> Any:
    """A labelled counter (kind Counter) or histogram with one `add(labels, value)` method:
    prometheus-client's own when `shared` (multiprocess files), else a plain-number twin."""
    name, doc, labels = spec
    if shared:
        extra = {"buckets": buckets} if kind is Histogram else {}
        return _Bound(kind(name, doc, labels, registry=registry, **extra))
    series = _PlainHistogram(name, doc, labels, buckets) if kind is Histogram else _PlainCounter(name, doc, labels)
    registry.register(series)
    return series


class _Bound:
    """A prometheus-client metric with its label children remembered: labels() takes a lock and
    rebuilds the key on every call."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}
        self._record = "inc" if isinstance(metric, Counter) else "observe"

    def add(self, labels: tuple[str, ...], value: float) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = getattr(self.metric.labels(*labels), self._record)
        child(value)


class _PlainCounter(Collector):
    """A labelled counter as a dict of plain numbers; the event loop is its only writer."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] += value

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class _PlainHistogram(Collector):
    """A labelled histogram as plain per-bucket counts (not cumulative) plus the sum, made
    cumulative at scrape time; the same buckets and text as prometheus-client's Histogram."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.bounds = (*(float(b) for b in buckets), float("inf"))
        self.le = [floatToGoString(b) for b in self.bounds]
        self.series: dict[tuple[str, ...], list[float]] = {}  # labels -> [count per bucket..., sum]

    def add(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0] * len(self.bounds) + [0.0]
        counts[bisect_left(self.bounds, value)] += 1  # the first bucket with value <= le
        counts[-1] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, counts in list(self.series.items()):
            running, cumulative = 0.0, []
            for le, count in zip(self.le, counts):
                running += count
                cumulative.append((le, running))
            family.add_metric(labels, cumulative, sum_value=counts[-1])
        yield family

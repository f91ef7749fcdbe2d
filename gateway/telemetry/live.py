"""The last hour of this replica's traffic, for the console's overview (`GET /admin/stats`).

Nothing here runs on the request path. Every SAMPLE_SECONDS a timer reads the cumulative
series the metrics already keep (requests by status, the duration and time-to-first-token
histograms, tokens, cost) and keeps one point per interval: the differences since the last
read. A ring of POINTS points holds the last hour. Percentiles come from the histograms'
buckets (linear within a bucket, as Prometheus' histogram_quantile does), so they are as
coarse as the buckets: good enough to see a p99 jump, not to bill by.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Metric

SAMPLE_SECONDS = 10.0
POINTS = 360  # one hour

_DURATION = "gen_ai_server_request_duration_seconds"
_TTFT = "gen_ai_server_time_to_first_token_seconds"
_TOKENS = "gen_ai_client_token_usage"
_COST = "tollway_cost_usd"


@dataclass(frozen=True, slots=True)
class Totals:
    """The cumulative figures at one instant (the sum over every label)."""

    at: float
    requests: float = 0.0
    errors: float = 0.0  # failures of the gateway or its upstreams (5xx, 429), not of the client
    tokens: float = 0.0
    cost_usd: float = 0.0
    duration: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count) per bucket
    ttft: tuple[tuple[float, float], ...] = ()


# Error types a client caused (its key, its body, its model, its own hang-up): an operator's
# error rate is about the gateway and its upstreams (5xx, 429), so these are not counted in it.
CLIENT_ERRORS = frozenset((
    "invalid_api_key", "model_not_allowed", "model_not_found", "unknown_url", "method_not_allowed",
    "request_too_large", "invalid_request", "invalid_request_error", "client_closed", "client_stalled",
    "request_timeout", "not_found", "conflict",
))


def totals(families: Iterable[Metric], at: float) -> Totals:
    """Sum the series the overview needs out of a metrics collection. Requests, errors and
    latency come from the duration histogram, whose operation label lets the admin API's own
    requests (the console's polling among them) be left out."""
    requests = errors = tokens = cost = 0.0
    buckets: dict[str, dict[float, float]] = {_DURATION: {}, _TTFT: {}}
    for family in families:
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if labels.get("gen_ai_operation_name") == "admin":
                continue
            if name == _DURATION + "_count":
                requests += sample.value
                kind = labels.get("error_type", "")
                if kind and kind not in CLIENT_ERRORS:
                    errors += sample.value
            elif name == _TOKENS + "_sum":
                tokens += sample.value
            elif name == _COST + "_total":
                cost += sample.value
            elif name.endswith("_bucket") and name[:-7] in buckets:
                bound = float(labels["le"])
                held = buckets[name[:-7]]
                held[bound] = held.get(bound, 0.0) + sample.value
    return Totals(at, requests, errors, tokens, cost, tuple(sorted(buckets[_DURATION].items())),
                  tuple(sorted(buckets[_TTFT].items())))


def quantile(q: float, counts: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile (seconds) of cumulative bucket counts, or None with no observations."""
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower  # past the last finite bucket: its bound is all that is known
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def _delta(now: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    held = dict(before)
    return [(bound, count - held.get(bound, 0.0)) for bound, count in now]


def point(now: Totals, before: Totals) -> dict[str, object]:
    """One interval of the overview, from two readings."""
    seconds = max(now.at - before.at, 1e-9)
    requests = now.requests - before.requests
    duration, ttft = _delta(now.duration, before.duration), _delta(now.ttft, before.ttft)

    def ms(q: float, counts: list[tuple[float, float]]) -> float | None:
        value = quantile(q, counts)
        return None if value is None else round(value * 1000, 3)

    return {
        "ts": now.at, "seconds": round(seconds, 3),
        "requests": requests, "requests_per_second": round(requests / seconds, 4),
        "errors": now.errors - before.errors,
        "error_rate": round((now.errors - before.errors) / requests, 6) if requests else 0.0,
        "p50_ms": ms(0.5, duration), "p99_ms": ms(0.99, duration), "ttft_p50_ms": ms(0.5, ttft),
        "tokens_per_second": round((now.tokens - before.tokens) / seconds, 4),
        "cost_usd": round(now.cost_usd - before.cost_usd, 10),
    }


class LiveStats:
    """The ring of points, filled by a timer on the gateway's loop."""

    def __init__(self, read: Callable[[], Iterable[Metric]], clock: Callable[[], float] = time.time,
                 interval: float = SAMPLE_SECONDS) -> None:
        self._read = read
        self._clock = clock
        self.interval = interval
        self.points: deque[dict[str, object]] = deque(maxlen=POINTS)
        self._last: Totals | None = None
        self._timer: asyncio.TimerHandle | None = None

    def sample(self) -> Totals:
        """Read the metrics now; add the interval since the last read to the ring."""
        now = totals(self._read(), self._clock())
        if self._last is not None:
            self.points.append(point(now, self._last))
        self._last = now
        return now

    def current(self) -> dict[str, object] | None:
        """The interval from the last sample to now (the figure the overview shows as 'now')."""
        if self._last is None:
            return None
        return point(totals(self._read(), self._clock()), self._last)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            self.sample()
            self._timer = loop.call_later(self.interval, tick)

        self.sample()
        self._timer = loop.call_later(self.interval, tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

"""What remains of each limit, read from the bucket store when /metrics is scraped.

`tollway_limit_remaining_ratio{limit, scope, owner, measure}`: the share of each configured
limit (`rate_limits`, `teams`, `keys[].limits`, `models[].limits`) still available in its
window, 0..1; `tollway_limit_remaining{...}` is the amount (requests, tokens, USD, requests in
flight). A team's `cost_usd` budget near 0 is the "budget near exhaustion" alert
(deploy/prometheus/alerts.yaml). The store is read once per scrape, never per request; with
Redis every worker reads the same shared buckets, so any worker's answer is the whole
gateway's. When the store does not answer, the series are left out (the store-error metrics
and alert say why) rather than reported as full.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tollway.gateway.limits.limiter import Limiter, StoreUnavailable

_LABELS = ("limit", "scope", "owner", "measure")
_READ_TIMEOUT = 2.0  # seconds a scrape waits for the store


class LimitLevels(Collector):
    def __init__(self) -> None:
        self._report: list[dict[str, Any]] = []

    async def refresh(self, limiter: Limiter | None) -> None:
        """Read every limit's level now (call before rendering a scrape)."""
        if limiter is None or not limiter.enabled:
            self._report = []
            return
        try:
            self._report = await asyncio.wait_for(limiter.usage_report(), _READ_TIMEOUT)
        except (StoreUnavailable, TimeoutError):
            self._report = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily("tollway_limit_remaining_ratio",
                                  "Share of the limit still available in its window (0..1).", labels=_LABELS)
        remaining = GaugeMetricFamily("tollway_limit_remaining",
                                      "Amount of the limit still available in its window.", labels=_LABELS)
        for entry in self._report:
            labels = (entry["id"], entry["scope"], entry["owner"], entry["measure"])
            remaining.add_metric(labels, entry["remaining"])
            if entry["limit"] > 0:
                ratio.add_metric(labels, min(entry["remaining"] / entry["limit"], 1.0))
        yield ratio
        yield remaining

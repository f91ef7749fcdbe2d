"""Routing state as Prometheus metrics, read when /metrics is scraped (never per request).

- `tollway_upstream_available{provider,endpoint}`: 1 if requests may go there now, 0 if
  ejected by outlier detection (or, for a pool endpoint, its last metrics scrape failed);
  `endpoint` is "" for the provider as a route target.
- `tollway_upstream_ejections{provider,endpoint}`: consecutive ejections (0 once it recovers).
- `tollway_pool_endpoint_waiting|running|kv_cache_usage|in_flight{provider,endpoint}`: what
  the picker saw: the replica's scraped vLLM queue, running batch and KV-cache use, and the
  requests this worker has in flight there.
- `tollway_config_reloads_total{result}`: reloads applied ("ok") and rejected. Each worker
  reloads itself; with --workers N the count is summed over the workers through the shared
  files (process_metrics.SharedCounts), so this collector leaves it out (`reloads=False`).

With --workers N each worker has its own breakers, in-flight counts and replica scrapes; a
scrape combines every worker's view (tollway.gateway.telemetry.worker_gauges) by ROUTING_RULES:
an upstream is available only if no worker has ejected it, ejections are the most any worker
counts, in-flight requests are summed, and a replica's scraped load is the highest reading.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tollway.gateway.telemetry.worker_gauges import Combine

_LABELS = ["provider", "endpoint"]
ROUTING_RULES: dict[str, Combine] = {
    "tollway_upstream_available": "min", "tollway_upstream_ejections": "max", "tollway_pool_endpoint_in_flight": "sum",
    "tollway_pool_endpoint_waiting": "max", "tollway_pool_endpoint_running": "max",
    "tollway_pool_endpoint_kv_cache_usage": "max",
}


class RoutingCollector:
    """A prometheus_client collector over the gateway's current runtime."""

    def __init__(self, runtime: Callable[[], Any], watcher: Callable[[], Any], reloads: bool = True) -> None:
        self._runtime, self._watcher, self._with_reloads = runtime, watcher, reloads

    def collect(self) -> Iterator[Metric]:
        rt, now = self._runtime(), time.monotonic()
        available = GaugeMetricFamily("tollway_upstream_available", "1 if requests may go to this upstream now.", labels=_LABELS)
        ejections = GaugeMetricFamily("tollway_upstream_ejections", "Consecutive outlier ejections.", labels=_LABELS)
        for name in rt.providers:
            member = rt.health.member(name)
            available.add_metric([name, ""], 1.0 if member.available(now) else 0.0)
            ejections.add_metric([name, ""], member.ejections)
        pool = {key: GaugeMetricFamily(f"tollway_pool_endpoint_{key}", text, labels=_LABELS) for key, text in (
            ("waiting", "Requests waiting in the replica's queue (scraped)."),
            ("running", "Requests the replica is running (scraped)."),
            ("kv_cache_usage", "The replica's KV-cache use, 0..1 (scraped)."),
            ("in_flight", "Requests this gateway worker has in flight to the replica."),
        )}
        for name, provider in rt.providers.items():
            for e in provider.endpoints.endpoints():
                labels = [name, e.name]
                available.add_metric(labels, 1.0 if e.candidate(now, 0.0).available else 0.0)
                ejections.add_metric(labels, e.health.ejections)
                pool["in_flight"].add_metric(labels, e.in_flight)
                load = e.load
                for key, value in (("waiting", load and load.waiting), ("running", load and load.running),
                                   ("kv_cache_usage", load and load.kv_cache)):
                    if value is not None:
                        pool[key].add_metric(labels, value)
        yield available
        yield ejections
        yield from pool.values()
        if self._with_reloads:
            yield from self._reloads()

    def _reloads(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily("tollway_config_reloads", "Config reloads by result.", labels=["result"])
        watcher = self._watcher()
        for result in ("ok", "rejected"):
            reloads.add_metric([result], watcher.reloads[result] if watcher else 0)
        yield reloads

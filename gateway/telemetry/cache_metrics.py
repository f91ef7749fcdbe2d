"""The response cache's store, read when /metrics is scraped (the request path adds nothing).

    tollway_cache_bytes, tollway_cache_entries   memory: what is held; redis: what this process wrote
    tollway_cache_evictions                      memory: live entries pushed out for room, since start
    tollway_cache_store_errors                   redis: failed calls since start (each a miss, never an error)

Gauges, each worker's own store: with --workers N summed over the workers by CACHE_RULES
(tollway.gateway.telemetry.worker_gauges). The per-request counts (hits, misses, bypasses,
single-flight joins, stores) are counters in tollway.gateway.telemetry.metrics.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tollway.gateway.cache.hooks import ResponseCache
from tollway.gateway.telemetry.worker_gauges import Combine

CACHE_RULES: dict[str, Combine] = {"tollway_cache_bytes": "sum", "tollway_cache_entries": "sum",
                                   "tollway_cache_evictions": "sum", "tollway_cache_store_errors": "sum"}


class CacheGauges(Collector):
    def __init__(self, cache: Callable[[], ResponseCache]) -> None:
        self._cache = cache  # the current one: a reload may replace it (and its store)

    def collect(self) -> Iterator[Metric]:
        backend = self._cache().backend
        if backend is None:
            return
        held, entries = backend.usage()
        yield GaugeMetricFamily("tollway_cache_bytes", "Bytes of response cache entries held (redis: written by "
                                "this process).", value=held)
        yield GaugeMetricFamily("tollway_cache_entries", "Response cache entries held (redis: written by this "
                                "process).", value=entries)
        yield GaugeMetricFamily("tollway_cache_evictions", "Live entries pushed out of the memory cache for room, "
                                "since the process started.", value=backend.evictions)
        yield GaugeMetricFamily("tollway_cache_store_errors", "Response cache store calls that failed since the "
                                "process started (each a miss).", value=backend.errors)

"""The response cache's metrics, from its plain counts, rendered when /metrics is scraped
(the request path only adds to a dict entry).

    tollway_cache_requests_total{model, outcome}   hit | miss | bypass, per public model
    tollway_cache_single_flight_joins_total        misses served by an identical request's answer
    tollway_cache_stores_total                      entries written
    tollway_cache_evictions_total                   memory: entries pushed out for room (not expiry)
    tollway_cache_store_errors_total                redis: failed calls (each a miss, never an error)
    tollway_cache_bytes, tollway_cache_entries      memory: what is held; redis: what this process wrote

Model labels are the config's model names (a bounded set). With --workers N each worker
reports its own counts.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tollway.gateway.cache.hooks import ResponseCache


class CacheMetrics(Collector):
    def __init__(self, cache: Callable[[], ResponseCache]) -> None:
        self._cache = cache  # the current one: a reload replaces it (its counts carry over)

    def collect(self) -> Iterator[Metric]:
        cache = self._cache()
        if cache.backend is None:
            return
        counts = cache.counts
        requests = CounterMetricFamily("tollway_cache_requests", "Requests of cached routes by public model and "
                                       "outcome (hit, miss, bypass).", labels=("model", "outcome"))
        for (model, outcome), n in list(counts.outcomes.items()):
            requests.add_metric((model, outcome), n)
        yield requests
        yield CounterMetricFamily("tollway_cache_single_flight_joins", "Misses answered by an identical request's "
                                  "upstream call instead of their own.", value=counts.joins)
        yield CounterMetricFamily("tollway_cache_stores", "Answers stored as cache entries.", value=counts.stored)
        backend = cache.backend
        yield CounterMetricFamily("tollway_cache_evictions", "Entries pushed out of the memory cache for room.",
                                  value=backend.evictions)
        yield CounterMetricFamily("tollway_cache_store_errors", "Cache store calls that failed (each a miss).",
                                  value=backend.errors)
        held, entries = backend.usage()
        yield GaugeMetricFamily("tollway_cache_bytes", "Bytes of cache entries held (redis: written by this process).",
                                value=held)
        yield GaugeMetricFamily("tollway_cache_entries", "Cache entries held (redis: written by this process).",
                                value=entries)

"""`process_*` and `python_*` metrics, and the per-worker counts `--workers N` must sum.

One worker: prometheus-client's own process, GC and platform collectors describe the process.

Several workers (prometheus-client's multiprocess mode): a scrape is answered by one worker,
and only what is in the shared files is summed. So:
- `process_*` are read at scrape time from /proc for every worker (the children of granian's
  main process) and summed: memory, CPU seconds and open fds of the whole gateway; the start
  time and the fd limit are the smallest of the workers';
- `python_gc_*`, `tollway_rate_limit_decisions_total` and `tollway_config_reloads_total` (each
  worker reloads itself), which each worker counts as plain
  numbers (nothing per request costs more than a dict increment), are added to the shared
  files by `SharedCounts.flush`: every `FLUSH_SECONDS` on each worker's loop, on the worker
  that answers a scrape just before it does, and at shutdown. Another worker's latest counts
  are at most `FLUSH_SECONDS` old in a scrape.
"""
from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

FLUSH_SECONDS = 1.0
RELOAD_RESULTS = ("ok", "rejected")
WORKERS_ENV = "TOLLWAY_WORKERS"  # as tollway.gateway.limits.limiter.WORKERS_ENV (which imports metrics)
_SMALLEST = ("process_start_time_seconds", "process_max_fds")  # not summed over workers
_GC_FIELDS = (("collected", "python_gc_objects_collected", "Objects collected during gc"),
              ("uncollectable", "python_gc_objects_uncollectable", "Uncollectable objects found during GC"),
              ("collections", "python_gc_collections", "Number of times this generation was collected"))


def register_process_metrics(registry: CollectorRegistry, shared: bool, register: Callable[[Collector], None]) -> None:
    """Add the process and Python collectors: `registry` is the single worker's, `register`
    adds a collector run at scrape time in multiprocess mode too."""
    if not shared:
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        return
    register(WorkersProcessCollector(worker_pids))
    register(PlatformCollector(registry=None))  # python_info: the same in every worker


def worker_pids() -> list[int]:
    """The gateway's worker processes: the children of granian's main process when `tollway
    serve` runs several workers, else this process."""
    me = os.getpid()
    if os.environ.get(WORKERS_ENV, "1") in ("", "1"):
        return [me]
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return [me]
    return pids if me in pids else [me, *pids]


class WorkersProcessCollector(Collector):
    """prometheus-client's process metrics for each of `pids()`, combined into one series each."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._current = 0
        self._one = ProcessCollector(pid=lambda: self._current, registry=None)

    def collect(self) -> Iterator[Any]:
        kinds: dict[str, tuple[str, str]] = {}
        values: dict[str, list[float]] = {}
        for pid in self._pids():
            self._current = pid
            for family in self._one.collect():  # empty for a worker that just exited
                kinds[family.name] = (family.type, family.documentation)
                values.setdefault(family.name, []).append(family.samples[0].value)
        for name, (kind, doc) in kinds.items():
            total = min(values[name]) if name in _SMALLEST else sum(values[name])
            yield (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, value=total)


class SharedCounts:
    """A worker's plain counts, carried into prometheus-client's multiprocess files as deltas."""

    def __init__(self, registry: CollectorRegistry, limit_counts: dict[tuple[str, str], int], limit_doc: str) -> None:
        self._limit_counts = limit_counts
        self._limits = Counter("tollway_rate_limit_decisions", limit_doc, ("limit", "decision"), registry=registry)
        self._gc = [(field, Counter(name, doc, ("generation",), registry=registry)) for field, name, doc in _GC_FIELDS]
        self._sent: dict[tuple[int, tuple[str, ...]], float] = {}  # (id of the counter, labels) -> total sent
        self._reloads = Counter("tollway_config_reloads", "Config reloads by result.", ("result",), registry=registry)
        for result in RELOAD_RESULTS:  # present at 0, as with one worker
            self._reloads.labels(result)
        self._reload_counts: Callable[[], dict[str, int] | None] = lambda: None

    def track_reloads(self, counts: Callable[[], dict[str, int] | None]) -> None:
        """Count the reloads `counts()` reports (the config watcher's, None before it exists)."""
        self._reload_counts = counts

    def flush(self) -> None:
        for key, count in list(self._limit_counts.items()):
            self._add(self._limits, key, count)
        reloads = self._reload_counts()
        for result, count in (reloads or {}).items():
            self._add(self._reloads, (result,), count)
        for generation, stats in enumerate(gc.get_stats()):
            for field, counter in self._gc:
                self._add(counter, (str(generation),), stats[field])

    def _add(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        key = (id(counter), labels)
        sent = self._sent.get(key, 0)
        if total > sent:
            counter.labels(*labels).inc(total - sent)
            self._sent[key] = total

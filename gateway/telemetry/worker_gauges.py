"""Scrape-time gauges of every worker with `--workers N`, combined into one series each.

Counters and histograms are summed over the workers by prometheus-client's multiprocess
files. Gauges computed at scrape time (routing state, the ledger's queue) cannot go there:
their series follow the current config (an endpoint removed by a reload must vanish, where a
multiprocess file keeps every series until its process exits). So each worker publishes its
gauges as a small JSON snapshot in the same directory — every FLUSH_SECONDS on its loop, and
just before it answers a scrape — and the worker that answers combines the snapshots of the
live workers, series by series, with each metric's rule:

- `sum`: a count over the gateway (requests in flight to an endpoint, records queued);
- `min`: a health bit (an upstream is available only if no worker has ejected it);
- `max`: the worst of the workers (consecutive ejections, the ledger's lag), or a reading each
  worker takes of the same thing (a replica's scraped queue).

A worker's snapshot is at most FLUSH_SECONDS old in a scrape; a worker that exited is left out
(its snapshot is removed by the next scrape that finds it gone).
"""
from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import msgspec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

Combine = Literal["sum", "min", "max"]
_COMBINE: dict[Combine, Callable[[list[float]], float]] = {"sum": sum, "min": min, "max": max}


class Family(msgspec.Struct, array_like=True):
    """One gauge of one worker: its name, help, label names and samples (label values, value)."""

    name: str
    doc: str
    labels: list[str]
    samples: list[tuple[list[str], float]]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[Family]).decode


class WorkersGauges(Collector):
    """`inner`'s gauges over every worker: published by each, combined by the one scraped.
    `rules` names each metric's rule (a metric not named is summed)."""

    def __init__(self, inner: Collector, tag: str, rules: Mapping[str, Combine], directory: str,
                 pids: Callable[[], list[int]]) -> None:
        self._inner, self._rules, self._pids = inner, rules, pids
        self._directory, self._tag = directory, tag

    def _path(self, pid: int) -> str:
        return os.path.join(self._directory, f"gauges_{self._tag}_{pid}.json")

    def publish(self) -> None:
        """Write this worker's gauges (atomically: a scrape never reads half a snapshot)."""
        families = [Family(f.name, f.documentation, list(f.samples[0].labels) if f.samples else [],
                           [(list(s.labels.values()), s.value) for s in f.samples])
                    for f in self._inner.collect() if f.type == "gauge"]
        path = self._path(os.getpid())
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_encode(families))
            os.replace(tmp, path)
        except OSError:  # a full or vanished directory costs this snapshot, never the worker
            pass

    def withdraw(self) -> None:
        """Remove this worker's snapshot (it is exiting)."""
        with contextlib.suppress(OSError):
            os.unlink(self._path(os.getpid()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.publish()
        workers = set(self._pids())
        snapshots: list[list[Family]] = []
        for path in glob.glob(self._path(0).replace("_0.json", "_*.json")):
            pid = _pid_of(path)
            if pid not in workers:
                with contextlib.suppress(OSError):  # another scrape may be removing it too
                    os.unlink(path)
                continue
            try:
                with open(path, "rb") as f:
                    snapshots.append(_decode(f.read()))
            except (OSError, msgspec.DecodeError):
                continue  # a worker exiting, or a snapshot from another version: the rest stand
        yield from self._combined(snapshots)

    def _combined(self, snapshots: list[list[Family]]) -> Iterator[GaugeMetricFamily]:
        heads: dict[str, Family] = {}
        values: dict[str, dict[tuple[str, ...], list[float]]] = {}
        for families in snapshots:
            for family in families:
                head = heads.get(family.name)
                if head is None or (family.samples and not head.samples):  # label names come with samples
                    heads[family.name] = family
                series = values.setdefault(family.name, {})
                for labels, value in family.samples:
                    series.setdefault(tuple(labels), []).append(value)
        for name, head in heads.items():
            combine = _COMBINE[self._rules.get(name, "sum")]
            out = GaugeMetricFamily(name, head.doc, labels=head.labels)
            for key, seen in values[name].items():
                out.add_metric(list(key), combine(seen))
            yield out


def _pid_of(path: str) -> int:
    try:
        return int(path.rsplit("_", 1)[1].removesuffix(".json"))
    except ValueError:
        return -1

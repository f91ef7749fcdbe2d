"""Scrape-time gauges combined over workers (tollway.gateway.telemetry.worker_gauges)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from tollway.gateway.telemetry.worker_gauges import WorkersGauges


class Fixed:
    """A collector with set values: {(provider,): (available, in_flight)}."""

    def __init__(self, values: dict[str, tuple[float, float]], queued: float) -> None:
        self.values, self.queued = values, queued

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available = GaugeMetricFamily("up", "health", labels=["provider"])
        flight = GaugeMetricFamily("in_flight", "load", labels=["provider"])
        for provider, (up, n) in self.values.items():
            available.add_metric([provider], up)
            flight.add_metric([provider], n)
        yield available
        yield flight
        yield GaugeMetricFamily("queued", "records", value=self.queued)


def _samples(gauges: WorkersGauges) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(f.name, tuple(s.labels.values())): s.value for f in gauges.collect() for s in f.samples}


def test_each_metric_is_combined_by_its_rule_and_only_live_workers_count(tmp_path: Path, monkeypatch) -> None:
    rules = {"up": "min", "in_flight": "sum"}  # queued: not named, summed
    me, other, gone = os.getpid(), os.getpid() + 100_000, os.getpid() + 200_000
    workers = [me, other]
    mine = WorkersGauges(Fixed({"a": (1, 2), "b": (1, 0)}, 3), "t", rules, str(tmp_path), lambda: workers)
    with monkeypatch.context() as m:  # what the other workers published
        m.setattr(os, "getpid", lambda: other)
        WorkersGauges(Fixed({"a": (0, 5), "c": (1, 1)}, 4), "t", rules, str(tmp_path), lambda: workers).publish()
        m.setattr(os, "getpid", lambda: gone)
        WorkersGauges(Fixed({"a": (0, 50)}, 40), "t", rules, str(tmp_path), lambda: workers).publish()
    got = _samples(mine)
    assert got == {("up", ("a",)): 0.0, ("up", ("b",)): 1.0, ("up", ("c",)): 1.0,
                   ("in_flight", ("a",)): 7.0, ("in_flight", ("b",)): 0.0, ("in_flight", ("c",)): 1.0,
                   ("queued", ()): 7.0}
    assert not (tmp_path / f"gauges_t_{gone}.json").exists(), "an exited worker's snapshot is removed"
    mine.withdraw()
    assert not (tmp_path / f"gauges_t_{me}.json").exists()


def test_a_series_a_reload_removed_vanishes_with_the_next_snapshot(tmp_path: Path) -> None:
    source = Fixed({"a": (1, 0), "old": (1, 0)}, 0)
    gauges = WorkersGauges(source, "t", {}, str(tmp_path), lambda: [os.getpid()])
    assert ("up", ("old",)) in _samples(gauges)
    del source.values["old"]
    assert ("up", ("old",)) not in _samples(gauges)


def test_a_worker_without_samples_of_a_labelled_gauge_does_not_strip_the_labels(tmp_path: Path) -> None:
    # The family's label names were taken from whichever snapshot came first: one with no
    # samples (a worker that has seen no provider yet) has none, and every other worker's
    # series were then exposed without labels, as duplicates a Prometheus scrape rejects.
    from tollway.gateway.telemetry.worker_gauges import Family

    gauges = WorkersGauges(Fixed({}, 0), "t", {}, str(tmp_path), lambda: [])
    empty = [Family("up", "health", [], [])]
    full = [Family("up", "health", ["provider"], [(["a"], 1.0), (["b"], 0.0)])]
    for snapshots in ([empty, full], [full, empty]):
        [family] = gauges._combined(snapshots)
        assert {tuple(s.labels.items()): s.value for s in family.samples} == {
            (("provider", "a"),): 1.0, (("provider", "b"),): 0.0}

"""With --workers N, /metrics counts every worker's requests, whichever worker answers."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import openai
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import standard_config
from tests.harness import TEST_KEY, GatewayProcess, key_hash
from tollway.gateway.telemetry.process_metrics import FLUSH_SECONDS


def _requests_ok(gw: GatewayProcess) -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    return sum(s.value for s in families["tollway_requests"].samples
               if s.name == "tollway_requests_total" and s.labels.get("model") == "demo" and s.labels["status"] == "200")


def test_counts_are_summed_over_workers(openai_upstream):
    gw = GatewayProcess(standard_config(openai_upstream.url), workers=2)
    try:
        for _ in range(3):  # new connections, so the kernel spreads them over both workers
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
            for _ in range(10):
                client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])
            client.close()
        # Every scrape, whichever worker answers it, sees all 30.
        assert [_requests_ok(gw) for _ in range(6)] == [30.0] * 6
    finally:
        gw.stop()


def _families(gw: GatewayProcess) -> dict:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def _total(families: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples with these labels; 0 for a counter never counted (multiprocess
    mode exports no family for it)."""
    family = families.get(name)
    return 0.0 if family is None else sum(s.value for s in family.samples
               if s.name == name + "_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def test_limit_decisions_gc_and_process_metrics_cover_every_worker():
    gw = GatewayProcess(f"""
providers: [{{name: local, schema: fake}}]
models: [{{name: demo, targets: [{{provider: local}}]}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    limits: [{{requests: 100000, per: 1m}}]
rate_limits: {{backend: redis, key_prefix: "workers-{uuid.uuid4().hex[:12]}"}}
""", workers=2)
    try:
        for _ in range(3):  # new connections, so the kernel spreads them over both workers
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
            for _ in range(10):
                client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])
            client.close()
        # Each worker carries its decisions into the shared files within FLUSH_SECONDS; after
        # that every scrape, whichever worker answers it, sees all 30. (A request Redis was too
        # slow for on a loaded machine passes unmetered: a store error instead of a decision.)
        def decided(families: dict) -> float:
            return (_total(families, "tollway_rate_limit_decisions", decision="allowed")
                    + _total(families, "tollway_rate_limit_store_errors"))

        deadline = time.monotonic() + 5 * FLUSH_SECONDS
        while decided(_families(gw)) < 30:
            assert time.monotonic() < deadline, decided(_families(gw))
            time.sleep(0.1)
        scrapes = [_families(gw) for _ in range(6)]
        assert [decided(f) for f in scrapes] == [30.0] * 6
        assert _total(scrapes[0], "tollway_rate_limit_decisions", decision="allowed") >= 25

        workers = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        families = scrapes[-1]
        rss = families["process_resident_memory_bytes"].samples[0].value
        assert abs(rss / 2**20 - gw.worker_rss_mb()) < 0.2 * gw.worker_rss_mb()  # both workers, not one
        start = families["process_start_time_seconds"].samples[0].value
        assert start == min(_start_time(int(pid)) for pid in workers)
        assert _total(families, "process_cpu_seconds") > 0
        assert families["process_open_fds"].samples[0].value > 0
        assert _total(families, "python_gc_collections", generation="0") > 0
        assert families["python_info"].samples[0].labels["implementation"] == "CPython"
    finally:
        gw.stop()


def _start_time(pid: int) -> float:
    """What prometheus-client's ProcessCollector reports for `pid`: boot time + start ticks."""
    with open("/proc/stat") as f:
        btime = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    with open(f"/proc/{pid}/stat", "rb") as f:
        ticks = float(f.read().split(b")")[-1].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def test_config_reloads_are_summed_over_workers(openai_upstream, tmp_path):
    shared_dir = tmp_path / "metrics"  # the workers' shared files (`tollway serve` keeps a set one)
    shared_dir.mkdir()
    gw = GatewayProcess(standard_config(openai_upstream.url), workers=2,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(shared_dir)})
    try:
        assert _total(_families(gw), "tollway_config_reloads", result="ok") == 0
        _wait_until_workers_started(gw, shared_dir)
        os.kill(gw.proc.pid, signal.SIGHUP)  # granian's main process: it tells each worker to reload
        deadline = time.monotonic() + 5 * FLUSH_SECONDS
        while _total(_families(gw), "tollway_config_reloads", result="ok") < 2:
            assert time.monotonic() < deadline, gw.stderr()
            time.sleep(0.1)
        scrapes = [_families(gw) for _ in range(6)]
        assert [_total(f, "tollway_config_reloads", result="ok") for f in scrapes] == [2.0] * 6
        assert [_total(f, "tollway_config_reloads", result="rejected") for f in scrapes] == [0.0] * 6
    finally:
        gw.stop()


def _wait_until_workers_started(gw: GatewayProcess, shared_dir: Path, workers: int = 2) -> None:
    """/readyz answering proves one worker ready; a SIGHUP reaches a worker still starting before
    its handler is there. A worker's first flush of its counts into the shared files comes a
    FLUSH_SECONDS after it finished starting (and installed the handler): wait for each's."""
    deadline = time.monotonic() + 10
    while True:
        pids = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()
        started = 0
        for pid in pids:
            path = shared_dir / f"counter_{pid}.db"
            if path.exists():
                values = MmapedDict.read_all_values_from_file(str(path))
                started += any("python_gc_collections" in key and value > 0 for key, value, *_ in values)
        if started == workers:
            return
        assert time.monotonic() < deadline, "the workers never finished starting"
        time.sleep(0.05)


def _available(gw: GatewayProcess, provider: str) -> list[float]:
    family = _families(gw)["tollway_upstream_available"]
    return [s.value for s in family.samples if s.labels["provider"] == provider and s.labels["endpoint"] == ""]


def test_routing_gauges_combine_every_workers_view(tmp_path: Path):
    """An upstream one worker ejected reads 0 in every scrape, whichever worker answers it (a
    health bit is the minimum over the workers), with one series per upstream, not one per
    worker; an exited worker's snapshot is not read."""
    gw = GatewayProcess(f"""
providers:
  - {{name: dead, schema: openai, base_url: "http://127.0.0.1:9/v1", api_key: x}}
  - {{name: local, schema: fake}}
models: [{{name: demo, targets: [{{provider: dead}}]}}, {{name: ok, targets: [{{provider: local}}]}}]
keys: [{{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}]
routing: {{outlier_detection: {{consecutive_failures: 1, cool_down: 120, max_cool_down: 120}}, retry: {{attempts: 1}}}}
""", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        try:
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])
        except openai.APIError:
            pass  # the dead upstream: one failure ejects it in the worker that tried it
        client.close()
        time.sleep(FLUSH_SECONDS * 2.5)  # the other worker's snapshot is at most FLUSH_SECONDS old
        seen = [_available(gw, "dead") for _ in range(8)]  # new connections: both workers answer some
        assert seen == [[0.0]] * 8
        assert [_available(gw, "local") for _ in range(3)] == [[1.0]] * 3
        snapshots = list(tmp_path.glob("gauges_routing_*.json"))
        assert len(snapshots) == 2, snapshots
    finally:
        gw.stop()

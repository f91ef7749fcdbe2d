"""A vLLM replica's load, read from its Prometheus text exposition (sans-IO).

vLLM exports, per model served, `vllm:num_requests_waiting` (the queue), `vllm:num_requests_running`
and the KV-cache use as a fraction, `vllm:kv_cache_usage_perc` (named `vllm:gpu_cache_usage_perc`
before vLLM 0.10). A replica serving several models (LoRA adapters) has one series each; the
load of the replica is their sum (the cache is shared, so its use is the largest value seen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name first
MAX_SAMPLE = 1e9  # a sample's value is held to ±this: no real queue is longer, and sums stay finite


@dataclass(frozen=True)
class ReplicaLoad:
    waiting: float | None = None  # None: the replica did not export it
    running: float | None = None
    kv_cache: float | None = None  # 0..1


def parse_replica_load(text: str) -> ReplicaLoad:
    """The load in a Prometheus text exposition. Raises ValueError if no vLLM metric is in it,
    which is how a scrape of something that is not a vLLM replica is told apart."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, value = _sample(line)
        if name is None:
            continue
        if name in KV_CACHE:
            sums[name] = max(sums.get(name, 0.0), value)
        else:
            sums[name] = sums.get(name, 0.0) + value
    if not sums:
        raise ValueError("no vllm: metrics in the exposition")
    kv = next((sums[n] for n in KV_CACHE if n in sums), None)
    return ReplicaLoad(sums.get(WAITING), sums.get(RUNNING), kv)


def _sample(line: str) -> tuple[str | None, float]:
    """(metric name, value) of one sample line; (None, 0) for lines we cannot read."""
    brace = line.find("{")
    if brace >= 0:
        name, rest = line[:brace], line[line.rfind("}") + 1:]
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    if not fields:
        return None, 0.0
    try:
        value = float(fields[0])
    except ValueError:
        return None, 0.0
    if not math.isfinite(value):  # NaN says nothing about load, and an infinite queue would make
        return None, 0.0          # every score NaN (a replica must not be able to break the picker)
    return name.strip(), min(max(value, -MAX_SAMPLE), MAX_SAMPLE)  # (so a sum of samples stays finite)

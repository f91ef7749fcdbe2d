"""The response cache on bench/run's setup (`bench/run --cache ROUNDS`): what a miss costs and
what a hit gains, as ratios within each round.

Three Tollway configs, each started fresh, pinned to the gateway CPU, behind the same nginx
mock upstream, loaded by wrk (c=32) for a JSON and a streaming cell:

    off   no `cache:` at all                     every request's prompt differs (BENCH_UNIQUE)
    miss  memory cache, every model opted in     every request's prompt differs: each one a miss
                                                 that is stored (32 MB, so LRU eviction runs too)
    hit   the same cache                          one prompt: after the first, every request a hit

The order rotates each round. Reported per cell: req/s and the gateway's CPU microseconds per
request (granian's processes, from /proc), which moves far less than req/s on a shared machine.
Targets (issue 16): hit >= 2x the req/s of a miss; a miss costs < 3% of throughput vs off.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import uuid
from argparse import Namespace
from pathlib import Path

from loadgen import run_wrk
from services import ServiceSet, cpu_seconds
from tollway_proc import BENCH_KEY, REPO, serve_argv, write_config
from upstream_conf import MODEL

CACHE = "{backend: memory, max_bytes: 33554432}"
CONFIGS = ("off", "miss", "hit")
CELLS = (("json", ""), ("stream", "-sse"))


def measure_cache(services: ServiceSet, args: Namespace, workdir: Path, json_port: int, sse_port: int,
                  port: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """config -> cell -> [(req/s, CPU us per request)] per round."""
    results: dict[str, dict[str, list[tuple[float, float]]]] = {c: {cell: [] for cell, _ in CELLS} for c in CONFIGS}
    models = {MODEL: json_port, MODEL + "-sse": sse_port}
    for round_no in range(args.cache):
        order = CONFIGS[round_no % 3:] + CONFIGS[:round_no % 3]
        for name in order:
            config = write_config(workdir, models, cache="" if name == "off" else CACHE, name=f"cache-{name}.yaml")
            gw = services.start(f"tollway-cache-{name}", args.gw_cpu, serve_argv(config, port), port, cwd=REPO)
            try:
                for cell, suffix in CELLS:
                    results[name][cell].append(_cell(gw.pid, port, args, name, cell == "stream", MODEL + suffix))
            finally:
                services.stop(gw)
    return results


def _cell(pid: int, port: int, args: Namespace, name: str, stream: bool, model: str) -> tuple[float, float]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    unique = "" if name == "hit" else uuid.uuid4().hex[:12]
    run_wrk(url, 32, args.warm, args.load_cpu, stream=stream, model=model, key=BENCH_KEY, unique=unique)
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [pid, *map(int, children)]
    before = cpu_seconds(pids)
    cell = run_wrk(url, 32, args.seconds, args.load_cpu, stream=stream, model=model, key=BENCH_KEY,
                   unique=unique + "m" if unique else "")
    used = cpu_seconds(pids) - before
    if cell.errors:
        print(f"  cache {name}: {cell.errors} errors", file=sys.stderr)
    print(f"  cache {name:4} {'stream' if stream else 'json':6} c=32 {cell.rps:9.0f} req/s  "
          f"{used / (cell.rps * round(args.seconds)) * 1e6:7.1f} us CPU/request", file=sys.stderr)
    return cell.rps, used / (cell.rps * round(args.seconds)) * 1e6


def report(results: dict[str, dict[str, list[tuple[float, float]]]]) -> list[str]:
    """The table and the targets, each ratio taken within a round and the median over rounds."""
    lines = [f"{'cell':6} {'config':6} {'req/s':>8} {'CPU us/req':>10}   (medians over {len(results['off']['json'])} rounds)"]
    for cell, _ in CELLS:
        for name in CONFIGS:
            runs = results[name][cell]
            lines.append(f"{cell:6} {name:6} {statistics.median(r for r, _ in runs):8.0f} "
                         f"{statistics.median(c for _, c in runs):10.1f}")
    for cell, _ in CELLS:
        off, miss, hit = (results[name][cell] for name in CONFIGS)
        gain = statistics.median(h[0] / m[0] for h, m in zip(hit, miss))
        cost = statistics.median(1 - m[0] / o[0] for m, o in zip(miss, off))
        cpu = statistics.median(m[1] / o[1] - 1 for m, o in zip(miss, off))
        lines.append(f"target ({cell}): hit >= 2x the req/s of a miss: {gain:.2f}x -> {'PASS' if gain >= 2 else 'MISS'}")
        lines.append(f"target ({cell}): a miss costs < 3% of throughput vs off: {100 * cost:+.1f}% "
                     f"(CPU per request {100 * cpu:+.1f}%) -> {'PASS' if cost < 0.03 else 'MISS'}")
    return lines

#!/usr/bin/env python3
"""The cost of a rate-limit decision, as ratios to the same gateway with limits off, in one run.

Two measurements:
1. per decision, in process: `Limiter.reserve` + settle on the memory store (the bucket kernel
   that is active, compiled or pure), in microseconds;
2. whole gateway: requests/s of `tollway serve` (1 worker, pinned to one CPU) with the built-in
   fake provider, under wrk (pinned to the other CPU), for three configs run back to back and
   interleaved: limits off; memory backend with a request and a token limit; Redis backend with
   the same limits. A private redis-server runs on the load CPU, so the gateway's CPU is what
   is compared. The ratio is throughput lost to limits: 1 - rps(limits) / rps(off).

Targets (issue 4): memory backend < 10 %, Redis backend < 25 % of gateway throughput.

    python bench/limits.py [--seconds 5] [--rounds 2] [--conns 32]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import run_wrk  # noqa: E402
from tollway_proc import BENCH_KEY, REPO, serve_argv, tollway_env  # noqa: E402

from core import config as config_mod  # noqa: E402
from core.kernels import ACTIVE  # noqa: E402
from core.keys import hash_key  # noqa: E402
from core.request import RequestHead  # noqa: E402
from core.usage import Usage  # noqa: E402

LIMITS = "[{requests: 1000000000, per: 1m}, {total_tokens: 100000000000, per: 1m}]"


def config_text(backend: str | None, redis_port: int) -> str:
    limits = f"    limits: {LIMITS}\n" if backend else ""
    rate = (f"rate_limits: {{backend: {backend}, redis_url: 'redis://127.0.0.1:{redis_port}/0', key_prefix: bench}}\n"
            if backend else "")
    return ("providers: [{name: fake, schema: fake}]\n"
            "models: [{name: gpt-4o-mini, targets: [{provider: fake}]}]\n"
            f'keys:\n  - name: bench\n    key_hash: "{hash_key(BENCH_KEY)}"\n{limits}'
            f"{rate}server: {{access_log: false}}\n")


# -- 1. per decision, in process ----------------------------------------------------------

def decision_cost(n: int = 20000) -> float:
    """Microseconds per reserve + settle on the memory store."""
    from gateway.limiter import Limiter
    from gateway.limiter_memory import MemoryBuckets
    from gateway.metrics import Metrics

    cfg = config_mod.loads(config_text("memory", 0))
    limiter = Limiter(cfg, MemoryBuckets(), Metrics())
    key, head, body = cfg.keys[0], RequestHead(model="gpt-4o-mini", max_tokens=64), b"x" * 250
    usage = Usage(prompt_tokens=30, completion_tokens=20, total_tokens=50)

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            lease = await limiter.reserve(key, "gpt-4o-mini", "chat", head, body)
            limiter.settle(lease, usage, "gpt-4o-mini")
        return (time.perf_counter() - start) / n * 1e6

    return asyncio.run(run())


# -- 2. whole gateway ------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tollway exited with {proc.returncode}: {Path(proc.args[-1]).name}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("tollway did not become ready")


def measure(name: str, workdir: Path, redis_port: int, args: argparse.Namespace) -> float:
    path = workdir / f"{name}.yaml"
    path.write_text(config_text(None if name == "off" else name, redis_port))
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", args.gateway_cpu, *serve_argv(path, port)], env=tollway_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / f"{name}.err", "ab"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, proc)
        except RuntimeError:
            print((workdir / f"{name}.err").read_text()[-2000:], file=sys.stderr)
            raise
        run_wrk(url + "/v1/chat/completions", args.conns, 1, args.load_cpu, stream=False, model="gpt-4o-mini",
                key=BENCH_KEY)  # warm up
        cell = run_wrk(url + "/v1/chat/completions", args.conns, args.seconds, args.load_cpu, stream=False,
                       model="gpt-4o-mini", key=BENCH_KEY)
        if cell.errors:
            raise RuntimeError(f"{name}: {cell.errors} errors (see {workdir}/{name}.err)")
        return cell.rps
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (granian and its workers); SIGKILL if it lingers."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--gateway-cpu", default="1")
    p.add_argument("--load-cpu", default="0")
    args = p.parse_args()

    print(f"bucket kernel: {ACTIVE.get('buckets')}")
    print(f"memory store, reserve + settle: {decision_cost():.2f} us per request (in process)")

    redis_port = free_port()
    redis = subprocess.Popen(["taskset", "-c", args.load_cpu, "redis-server", "--port", str(redis_port),
                              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    rps: dict[str, list[float]] = {"off": [], "memory": [], "redis": []}
    try:
        with tempfile.TemporaryDirectory(prefix="tollway-bench-limits-") as tmp:  # noqa: SIM117
            for _ in range(args.rounds):
                for name in rps:
                    rps[name].append(measure(name, Path(tmp), redis_port, args))
    finally:
        redis.kill()
        redis.wait(5)

    base = statistics.median(rps["off"])
    print(f"\nwhole gateway, non-streaming chat, fake provider, c={args.conns}, {args.rounds} x {args.seconds:g}s each:")
    print(f"{'limits':<10}{'req/s (median)':>16}{'runs':>28}{'cost vs off':>14}{'target':>9}")
    for name, target in (("off", None), ("memory", 0.10), ("redis", 0.25)):
        median = statistics.median(rps[name])
        cost = 1 - median / base
        runs = ", ".join(f"{r:.0f}" for r in rps[name])
        verdict = "" if target is None else (" ok" if cost < target else " MISS") + f" <{target:.0%}"
        print(f"{name:<10}{median:>16.0f}{runs:>28}{cost:>14.1%}{verdict:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

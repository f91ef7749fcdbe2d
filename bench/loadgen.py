"""One benchmark cell: wrk, pinned to the load CPU, against one URL; parsed into a Cell."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = Path(__file__).with_name("chat.lua")
_DEBIAN_PACKAGE = {"nginx": "nginx-light", "wrk": "wrk"}


def ensure_tools(*commands: str) -> None:
    """Install the Debian packages of `commands` (nginx, wrk) that are not on PATH."""
    missing = [_DEBIAN_PACKAGE[c] for c in commands if not shutil.which(c)]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


@dataclass(frozen=True)
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, conns: int, seconds: float, cpu: str, *, stream: bool, model: str,
            key: str | None = None, log: Path | None = None, unique: str = "") -> Cell:
    """Run wrk for `seconds` with `conns` connections; returns its numbers. `unique` (a run
    id) makes every request's prompt different (chat.lua's BENCH_UNIQUE).

    Raises RuntimeError if wrk fails or prints no RESULT line.
    """
    env = dict(os.environ, BENCH_MODEL=model, BENCH_STREAM="1" if stream else "0",
               BENCH_KEY=key or "", BENCH_UNIQUE=unique)
    argv = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "--latency", "-s", str(_SCRIPT), url]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 30)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            raw = json.loads(line[len("RESULT "):])
            return Cell(raw["requests"] / raw["seconds"], raw["p50_ms"], raw["p99_ms"], raw["errors"])
    raise RuntimeError(f"wrk gave no result for {url}: {done.stderr.strip()[:300]}")

"""Metrics.observe per call, as Gateway._finish makes it once per request (one worker).

    python3 bench/metrics_observe.py                 # this tree
    python3 bench/metrics_observe.py --against REV   # and gateway/telemetry/metrics.py at git REV, alternately

Cases: a success with usage, an error without, and a hostile request (a 50 KB model name and
an upstream's own error code), which the bounded labels turn into `other`/`upstream_error`.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

from tollway.core.config import Config, Model, Provider, Target  # noqa: E402
from tollway.gateway.telemetry.metrics import MetricLabels, Metrics  # noqa: E402

N, ROUNDS = 200_000, 5
OK = dict(operation="chat", provider="openai", model="gpt-4o-mini", response_model="gpt-4o-mini", status=200,
          seconds=0.05, error_type="", input_tokens=12, output_tokens=9, provider_name="up")
CASES = {
    "success": OK,
    "error": dict(OK, status=429, error_type="rate_limit_exceeded", input_tokens=0, output_tokens=0),
    "hostile": dict(OK, response_model="probe-" + "x" * 50_000, status=400, error_type="y" * 5_000),
}


def _labels() -> MetricLabels:
    return MetricLabels(Config(providers=[Provider(name="up", schema="openai", base_url="http://x/v1")],
                               models=[Model(name="gpt-4o-mini", targets=[Target(provider="up")])]))


def _metrics_at(rev: str) -> ModuleType:
    """gateway/telemetry/metrics.py as it was at git `rev`, imported under another name."""
    text = subprocess.run(["git", "show", f"{rev}:gateway/telemetry/metrics.py"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    path = Path(tempfile.mkdtemp()) / "metrics_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("metrics_at_rev", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _per_call(observe: Callable[..., None], kwargs: dict[str, object]) -> float:
    return min(timeit.repeat(lambda: observe(**kwargs), number=N, repeat=3)) / N


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also time gateway/telemetry/metrics.py at this git revision")
    args = parser.parse_args()
    labels = _labels()
    contenders = {"this tree": Metrics(lambda: labels).observe}
    if args.against:
        contenders[args.against] = _metrics_at(args.against).Metrics().observe
    best: dict[tuple[str, str], float] = {}
    for _ in range(ROUNDS):  # alternate, so a noisy neighbour hurts every contender alike
        for name, observe in contenders.items():
            for case, kwargs in CASES.items():
                key = (name, case)
                best[key] = min(best.get(key, 1.0), _per_call(observe, kwargs))
    for case in CASES:
        print(f"{case:8}", "  ".join(f"{name}: {best[(name, case)] * 1e6:.3f} us" for name in contenders))


if __name__ == "__main__":
    main()

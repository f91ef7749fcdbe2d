"""The console overview's last hour: points made from the metrics' cumulative series."""
from __future__ import annotations

from tollway.gateway.telemetry.live import LiveStats, quantile
from tollway.gateway.telemetry.metrics import Metrics


def _observe(metrics: Metrics, status: int, seconds: float, tokens: int = 10, operation: str = "chat",
             error: str = "upstream_error") -> None:
    metrics.observe(operation=operation, provider="openai", model="m", response_model="m", status=status,
                    seconds=seconds, error_type="" if status == 200 else error, input_tokens=tokens,
                    output_tokens=tokens, provider_name="up", overhead=0.001)


def test_each_interval_is_the_difference_of_two_readings():
    metrics = Metrics()
    clock = [1000.0]
    live = LiveStats(lambda: metrics.registry.collect(), clock=lambda: clock[0])
    live.sample()
    for _ in range(8):
        _observe(metrics, 200, 0.015)
    _observe(metrics, 502, 3.0)
    _observe(metrics, 429, 0.015, error="rate_limit_exceeded")
    _observe(metrics, 401, 0.015, tokens=0, error="invalid_api_key")  # the client's fault: no error
    for _ in range(5):
        _observe(metrics, 200, 9.0, tokens=0, operation="admin")  # the console's polling: not traffic
    metrics.observe_spend("t", "m", "up", 0.25, 5, 5)
    clock[0] += 10
    live.sample()
    (p,) = live.points
    assert p["requests"] == 11 and p["requests_per_second"] == 1.1
    assert p["errors"] == 2 and p["error_rate"] == round(2 / 11, 6)
    assert 10 <= p["p50_ms"] <= 20, "the 0.01-0.02 s bucket"
    assert p["p99_ms"] > 2560, "the slow one"
    assert p["tokens_per_second"] == 20.0 and p["cost_usd"] == 0.25
    clock[0] += 10
    live.sample()
    assert live.points[-1]["requests"] == 0 and live.points[-1]["p50_ms"] is None, "a quiet interval: nothing to rank"


def test_quantile_interpolates_within_a_bucket():
    counts = [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]
    assert abs(quantile(0.5, counts) - 0.15) < 1e-9
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1, "past the last bound only the bound is known"


def test_the_ring_holds_one_hour():
    metrics = Metrics()
    clock = [0.0]
    live = LiveStats(lambda: metrics.registry.collect(), clock=lambda: clock[0])
    for _ in range(400):
        live.sample()
        clock[0] += 10
    assert len(live.points) == 360

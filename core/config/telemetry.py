"""`telemetry:`: where the gateway's traces go (metrics are scraped: see `server.metrics_auth`)."""
from __future__ import annotations

import msgspec


class Traces(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """OpenTelemetry traces exported as OTLP/HTTP JSON; see tollway.gateway.telemetry.tracing and docs/observability.md."""

    endpoint: str  # the collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = "tollway"
    sample_ratio: float = 1.0  # of new traces; an incoming traceparent's sampled flag is honoured
    headers: dict[str, str] = {}  # sent to the collector (auth); never logged
    export_interval: float = 1.0  # seconds between batches
    max_queue: int = 2048  # spans held for export; more are dropped and counted


class Telemetry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    traces: Traces | None = None  # absent: tracing is off

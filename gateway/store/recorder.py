"""The pipeline hook that turns each finished request into a usage record for the ledger."""
from __future__ import annotations

from tollway.core.errors import error_label
from tollway.core.ledger.record import MAX_MODEL_CHARS, UsageRecord, key_id_of
from tollway.gateway.exchange import Exchange
from tollway.gateway.store.ledger import Ledger


def usage_record(ex: Exchange) -> UsageRecord:
    """What the ledger keeps of `ex`: counts, names and times; never a prompt or a secret."""
    u = ex.usage
    return UsageRecord(
        ts=ex.ts, request_id=ex.request_id, key=ex.key_name, key_id=key_id_of(ex.key_name) if ex.key_name else None,
        team=ex.team, model=_cut(ex.model), provider=ex.provider, upstream_model=_cut(ex.upstream_model),
        api=ex.api, status=ex.status, error=error_label(ex.error_type) or None, stream=ex.stream,
        input_tokens=u.prompt_tokens if u else 0, cached_input_tokens=u.cached_tokens if u else 0,
        cache_write_tokens=u.cache_write_tokens if u else 0, output_tokens=u.completion_tokens if u else 0,
        reasoning_tokens=u.reasoning_tokens if u else 0, cost_usd=ex.cost_usd,
        latency_ms=round(ex.elapsed() * 1000, 3),
        ttft_ms=round((ex.first_byte - ex.start) * 1000, 3) if ex.stream and ex.first_byte else None,
        attempts=ex.attempts, tags=ex.tags, trace_id=ex.trace.trace_id if ex.trace is not None else None,
    )


def _cut(name: str | None) -> str | None:
    return name[:MAX_MODEL_CHARS] if name is not None and len(name) > MAX_MODEL_CHARS else name


class Recorder:
    """after_response: queue the request's record (tollway.gateway.pipeline.AfterResponse)."""

    __slots__ = ("ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(self, ex: Exchange) -> None:
        self.ledger.submit(usage_record(ex))

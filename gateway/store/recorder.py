"""The pipeline hook that turns each finished request into a usage record for the ledger."""
from __future__ import annotations

from tollway.core.errors import error_label
from tollway.core.ledger.record import MAX_MODEL_CHARS, UsageRecord, key_id_of
from tollway.gateway.exchange import Exchange
from tollway.gateway.store.ledger import Ledger


def usage_record(ex: Exchange) -> UsageRecord:
    """What the ledger keeps of `ex`: counts, names and times; never a prompt or a secret.
    Positional, in the record's field order (see UsageRecord)."""
    u, name = ex.usage, ex.key_name
    return UsageRecord(
        ex.ts, ex.request_id, name, key_id_of(name) if name else None, ex.team, _cut(ex.model), ex.provider,
        _cut(ex.upstream_model), ex.api, ex.status, error_label(ex.error_type) or None, ex.stream,
        u.prompt_tokens if u else 0, u.cached_tokens if u else 0, u.cache_write_tokens if u else 0,
        u.completion_tokens if u else 0, u.reasoning_tokens if u else 0, ex.cost_usd,
        round(ex.elapsed() * 1000, 3),
        round((ex.first_byte - ex.start) * 1000, 3) if ex.stream and ex.first_byte else None,
        ex.attempts, False, ex.tags, ex.trace.trace_id if ex.trace is not None else None,
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

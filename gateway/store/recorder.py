"""The pipeline hook that turns each finished request into a usage record for the ledger."""
from __future__ import annotations

import time

from tollway.core.errors import error_label
from tollway.core.ledger.record import MAX_MODEL_CHARS, UsageRecord
from tollway.gateway.exchange import Exchange
from tollway.gateway.store.ledger import Ledger


def usage_record(ex: Exchange) -> UsageRecord:
    """What the ledger keeps of `ex`: counts, names and times; never a prompt or a secret.
    Positional, in the record's field order (see UsageRecord); on every request's path."""
    u, model, upstream, first, guards = ex.usage, ex.model, ex.upstream_model, ex.first_byte, ex.guardrails
    if model is not None and len(model) > MAX_MODEL_CHARS:  # a client's string
        model = model[:MAX_MODEL_CHARS]
    if upstream is not None and len(upstream) > MAX_MODEL_CHARS:
        upstream = upstream[:MAX_MODEL_CHARS]
    return UsageRecord(
        ex.ts, ex.request_id, ex.key_name, ex.key_id, ex.team, model, ex.provider, upstream, ex.api, ex.status,
        error_label(ex.error_type) if ex.error_type else None, ex.stream,
        u.prompt_tokens if u else 0, u.cached_tokens if u else 0, u.cache_write_tokens if u else 0,
        u.completion_tokens if u else 0, u.reasoning_tokens if u else 0, ex.cost_usd,
        (time.perf_counter() - ex.start) * 1000, (first - ex.start) * 1000 if ex.stream and first else None,
        ex.attempts, ex.cache is not None and ex.cache.hit, ex.tags, ex.trace.trace_id if ex.trace is not None else None,
        guards.counts or None if guards is not None else None,
    )


class Recorder:
    """after_response: queue the request's record (tollway.gateway.pipeline.AfterResponse)."""

    __slots__ = ("ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(self, ex: Exchange) -> None:
        self.ledger.submit(usage_record(ex))

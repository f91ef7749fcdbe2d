"""Rollups: the ledger's per-hour and per-day totals per (key, team, model, provider).

They are kept forever (raw records only `ledger.retention_days`), so a long report reads a
few rows per group and day. The writer adds each batch's totals to them in the same
transaction as the batch's records, so the rollups and the records never disagree.
"""
from __future__ import annotations

from collections.abc import Iterable

from tollway.core.ledger.periods import DAY, HOUR
from tollway.core.ledger.record import UsageRecord

# A rollup row's identity: (bucket start, key, key_id, team, model, provider). A missing name
# is "" (database primary keys cannot hold NULL); readers turn it back into None.
RollupKey = tuple[int, str, str, str, str, str]
# Its sums, in this order (the tables' columns after the identity):
SUMS = ("requests", "errors", "unpriced_requests", "input_tokens", "cached_input_tokens", "cache_write_tokens",
        "output_tokens", "reasoning_tokens", "cost_usd")


def is_error(record: UsageRecord) -> bool:
    return record.status >= 400 or record.error is not None


def rollup(records: Iterable[UsageRecord], step: float) -> dict[RollupKey, list[float]]:
    """The batch's totals per bucket of `step` seconds (HOUR or DAY) and identity."""
    out: dict[RollupKey, list[float]] = {}
    for r in records:
        ident = (int(r.ts // step * step), r.key or "", r.key_id or "", r.team or "", r.model or "", r.provider or "")
        sums = out.get(ident)
        if sums is None:
            sums = out[ident] = [0.0] * len(SUMS)
        sums[0] += 1
        sums[1] += is_error(r)
        sums[2] += r.cost_usd is None
        sums[3] += r.input_tokens
        sums[4] += r.cached_input_tokens
        sums[5] += r.cache_write_tokens
        sums[6] += r.output_tokens
        sums[7] += r.reasoning_tokens
        sums[8] += r.cost_usd or 0.0
    return out


def hourly(records: Iterable[UsageRecord]) -> dict[RollupKey, list[float]]:
    return rollup(records, HOUR)


def daily(records: Iterable[UsageRecord]) -> dict[RollupKey, list[float]]:
    return rollup(records, DAY)

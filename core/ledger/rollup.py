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


def rollups(records: Iterable[UsageRecord]) -> tuple[dict[RollupKey, list[float]], dict[RollupKey, list[float]]]:
    """The batch's totals per hour and per day (UTC) and identity. One pass over the records
    makes the hours; the days are added up from the hours (a batch has few of those)."""
    hours: dict[RollupKey, list[float]] = {}
    for r in records:
        ident = (int(r.ts // HOUR * HOUR), r.key or "", r.key_id or "", r.team or "", r.model or "", r.provider or "")
        sums = hours.get(ident)
        if sums is None:
            sums = hours[ident] = [0.0] * len(SUMS)
        cost = r.cost_usd
        sums[0] += 1
        sums[1] += r.status >= 400 or r.error is not None
        sums[2] += cost is None
        sums[3] += r.input_tokens
        sums[4] += r.cached_input_tokens
        sums[5] += r.cache_write_tokens
        sums[6] += r.output_tokens
        sums[7] += r.reasoning_tokens
        sums[8] += cost or 0.0
    days: dict[RollupKey, list[float]] = {}
    for (hour, key, key_id, team, model, provider), sums in hours.items():
        ident = (int(hour // DAY * DAY), key, key_id, team, model, provider)
        have = days.get(ident)
        if have is None:
            days[ident] = list(sums)
        else:
            for i, value in enumerate(sums):
                have[i] += value
    return hours, days


def hourly(records: Iterable[UsageRecord]) -> dict[RollupKey, list[float]]:
    return rollups(records)[0]


def daily(records: Iterable[UsageRecord]) -> dict[RollupKey, list[float]]:
    return rollups(records)[1]

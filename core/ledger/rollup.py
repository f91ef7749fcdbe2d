"""Rollups: the ledger's per-hour and per-day totals per (key, team, model, provider).

They are kept forever (raw records only `ledger.retention_days`), so a long report reads a
few rows per group and day. The writer adds each batch's totals to them in the same
transaction as the batch's records, so the rollups and the records never disagree.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from msgspec.structs import astuple

from tollway.core.kernels import RollupSpec, bucket_sums
from tollway.core.ledger.periods import DAY, HOUR
from tollway.core.ledger.record import FIELDS, UsageRecord

# A rollup row's identity: (bucket start, key, key_id, team, model, provider). A missing name
# is "" (database primary keys cannot hold NULL); readers turn it back into None.
RollupKey = tuple[int, str, str, str, str, str]
# Its sums, in this order (the tables' columns after the identity):
SUMS = ("requests", "errors", "unpriced_requests", "input_tokens", "cached_input_tokens", "cache_write_tokens",
        "output_tokens", "reasoning_tokens", "cost_usd")
Row = tuple[object, ...]  # a record's values (astuple), in FIELDS order

# The hourly sums are the rollup kernel's (tollway.ext.rollup: C loops where it is built): they
# run per record of every request, on the SQLite writer's thread with the GIL held (PostgreSQL's
# server sums its own: gateway/store/postgres.py). callgrind, per record of a 200-record batch:
# ~7k instructions as Python (column-wise map/sum), ~0.9k so.
_HOURLY = RollupSpec(
    ts=FIELDS.index("ts"), seconds=HOUR, owner=tuple(map(FIELDS.index, ("key", "key_id", "team", "model", "provider"))),
    status=FIELDS.index("status"), error=FIELDS.index("error"), cost=FIELDS.index("cost_usd"),
    counts=tuple(map(FIELDS.index, SUMS[3:8])))


def is_error(record: UsageRecord) -> bool:
    return record.status >= 400 or record.error is not None


def rollups(records: Iterable[UsageRecord]) -> tuple[dict[RollupKey, list[float]], dict[RollupKey, list[float]]]:
    """The records' totals per hour and per day (UTC) and identity (see `rollups_of_rows`)."""
    return rollups_of_rows(list(map(astuple, records)))


def rollups_of_rows(rows: Sequence[Row]) -> tuple[dict[RollupKey, list[float]], dict[RollupKey, list[float]]]:
    """A batch's totals per hour and per day (UTC) and identity: per owner (key, key_id, team,
    model, provider; None and "" are one owner) and hour, then the days added up from the hours
    (a batch has few). `rows`: records as `astuple` gives them."""
    hours = cast(dict[RollupKey, list[float]], bucket_sums(rows, _HOURLY))
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

"""Rollups: the ledger's per-hour and per-day totals per (key, team, model, provider).

They are kept forever (raw records only `ledger.retention_days`), so a long report reads a
few rows per group and day. The writer adds each batch's totals to them in the same
transaction as the batch's records, so the rollups and the records never disagree.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter

from msgspec.structs import astuple

from tollway.core.ledger.periods import DAY, HOUR
from tollway.core.ledger.record import FIELDS, UsageRecord

# A rollup row's identity: (bucket start, key, key_id, team, model, provider). A missing name
# is "" (database primary keys cannot hold NULL); readers turn it back into None.
RollupKey = tuple[int, str, str, str, str, str]
# Its sums, in this order (the tables' columns after the identity):
SUMS = ("requests", "errors", "unpriced_requests", "input_tokens", "cached_input_tokens", "cache_write_tokens",
        "output_tokens", "reasoning_tokens", "cost_usd")

# A batch is summed a column at a time by C loops (map, sum, count over itemgetters of each
# record's astuple) rather than a record at a time in Python: it runs per record of every
# request, on the SQLite writer's thread (the GIL held) or on the loop (PostgreSQL).
# callgrind, one owner and hour, per record: 7.8k instructions as a Python loop, 5.7k so.
_OWNER = itemgetter(*map(FIELDS.index, ("key", "key_id", "team", "model", "provider")))
_TS, _STATUS, _ERROR, _COST = (itemgetter(FIELDS.index(f)) for f in ("ts", "status", "error", "cost_usd"))
_TOKENS = tuple(itemgetter(FIELDS.index(name)) for name in SUMS[3:8])
_ERROR_STATUS = (399).__lt__  # status >= 400
Row = tuple[object, ...]  # a record's values (astuple), in FIELDS order


def is_error(record: UsageRecord) -> bool:
    return record.status >= 400 or record.error is not None


def rollups(records: Iterable[UsageRecord]) -> tuple[dict[RollupKey, list[float]], dict[RollupKey, list[float]]]:
    """The batch's totals per hour and per day (UTC) and identity: per owner (key, key_id,
    team, model, provider) and hour, then the days added up from the hours (a batch has few)."""
    owners: dict[tuple[str, ...], list[Row]] = {}
    for r in map(astuple, records):
        owner = tuple(v or "" for v in _OWNER(r))  # (None and "" are one owner in the rollup tables)
        group = owners.get(owner)
        if group is None:
            owners[owner] = [r]
        else:
            group.append(r)
    hours: dict[RollupKey, list[float]] = {}
    for (key, key_id, team, model, provider), group in owners.items():
        for hour, part in _by_hour(group):
            hours[(hour, key, key_id, team, model, provider)] = _sums(part)
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


def _by_hour(group: list[Row]) -> Iterable[tuple[int, list[Row]]]:
    """The group's records per hour start: one hour, unless the batch crossed one."""
    times = list(map(_TS, group))
    first, last = min(times) // HOUR, max(times) // HOUR
    if first == last:
        return ((int(first * HOUR), group),)
    hours: dict[int, list[Row]] = {}
    for r in group:
        hours.setdefault(int(_TS(r) // HOUR * HOUR), []).append(r)
    return hours.items()


def _sums(group: Sequence[Row]) -> list[float]:
    """The group's sums in SUMS order: counts and tokens as ints, the cost a float."""
    if list(map(_ERROR, group)).count(None) == len(group):
        errors = sum(map(_ERROR_STATUS, map(_STATUS, group)))
    else:  # an error label on a status below 400 (a stream cut short after its 200)
        errors = sum(_ERROR_STATUS(_STATUS(r)) or _ERROR(r) is not None for r in group)
    costs = list(map(_COST, group))
    return [len(group), errors, costs.count(None), *(sum(map(tokens, group)) for tokens in _TOKENS),
            sum(filter(None, costs), 0.0)]


def hourly(records: Iterable[UsageRecord]) -> dict[RollupKey, list[float]]:
    return rollups(records)[0]


def daily(records: Iterable[UsageRecord]) -> dict[RollupKey, list[float]]:
    return rollups(records)[1]

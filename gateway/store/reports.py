"""Answers from the ledger, shared by the admin API and `tollway usage`."""
from __future__ import annotations

from tollway.core.ledger.periods import rfc3339
from tollway.core.ledger.record import FIELDS, UsageRecord
from tollway.core.ledger.report import SpendQuery, answer, merge
from tollway.gateway.store import LedgerStore, RequestFilter


async def spend_report(store: LedgerStore, query: SpendQuery) -> dict[str, object]:
    """The `{"object": "spend", ...}` report of `query`."""
    groups = merge(await store.spend(query))
    total = None
    if query.by_tag:  # a record with several tags is in several groups: total it once
        total = merge(await store.spend(SpendQuery((), query.since, query.until))).get(())
    return answer(query, groups, total)


def record_json(record: UsageRecord) -> dict[str, object]:
    """A record as the API shows it: `ts` in RFC 3339, tags as a list."""
    item: dict[str, object] = {name: getattr(record, name) for name in FIELDS}
    item["ts"] = rfc3339(record.ts)
    item["tags"] = list(record.tags)
    for name in ("latency_ms", "ttft_ms"):  # kept as measured; shown to the microsecond
        value = getattr(record, name)
        item[name] = round(value, 3) if value is not None else None
    return item


async def request_list(store: LedgerStore, where: RequestFilter) -> dict[str, object]:
    return {"object": "list", "data": [record_json(r) for r in await store.requests(where)]}

"""Answers from the ledger, shared by the admin API and `tollway usage`."""
from __future__ import annotations

from tollway.core.ledger.periods import rfc3339
from tollway.core.ledger.record import FIELDS, UsageRecord
from tollway.core.ledger.report import Group, SpendQuery, answer, merge
from tollway.core.ledger.rollup import SUMS
from tollway.gateway.store import LedgerStore, RequestFilter


async def spend_report(store: LedgerStore, query: SpendQuery, team: str | None = None) -> dict[str, object]:
    """The `{"object": "spend", ...}` report of `query`; only `team`'s spend when given (a team
    admin's view: asked by team, the other teams' groups dropped, then folded back)."""
    if team is not None:
        return await _team_report(store, query, team)
    groups = merge(await store.spend(query))
    total = None
    if query.by_tag:  # a record with several tags is in several groups: total it once
        total = merge(await store.spend(SpendQuery((), query.since, query.until))).get(())
    return answer(query, groups, total)


async def _team_report(store: LedgerStore, query: SpendQuery, team: str) -> dict[str, object]:
    dims = query.group_by if "team" in query.group_by else ("team", *query.group_by)
    at = dims.index("team")
    keep = [i for i, d in enumerate(dims) if d in query.group_by]
    groups: dict[Group, list[float]] = {}
    for group, sums in merge(await store.spend(SpendQuery(dims, query.since, query.until))).items():
        if group[at] == team:
            folded = tuple(group[i] for i in keep)
            held = groups.get(folded)
            groups[folded] = sums if held is None else [a + b for a, b in zip(held, sums, strict=True)]
    total = None
    if query.by_tag:
        by_team = merge(await store.spend(SpendQuery(("team",), query.since, query.until)))
        total = by_team.get((team,), [0.0] * len(SUMS))
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

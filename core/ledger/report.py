"""A spend report: what `/admin/spend` and `tollway usage` ask, and how their answer adds up.

The store answers each segment of the range (tollway.core.ledger.periods.segments) with rows
grouped by the asked dimensions; `merge` adds the segments' rows into one per group, and
`total` the whole. The answer's shape is a contract (issue 12): `{"object": "spend",
"group_by", "since", "until", "data": [...], "total": {...}}`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tollway.core.ledger.periods import parse_instant, rfc3339
from tollway.core.ledger.rollup import SUMS

DIMENSIONS = ("key", "team", "model", "provider", "day", "tag")
INT_SUMS = frozenset(SUMS) - {"cost_usd"}
DEFAULT_SINCE = "7d"

Group = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class SpendQuery:
    group_by: tuple[str, ...]
    since: float
    until: float

    @property
    def by_tag(self) -> bool:
        return "tag" in self.group_by


def spend_query(group_by: str | None, since: str | None, until: str | None, now: float) -> SpendQuery:
    """The query of `group_by=team,model&since=7d&until=...`. Raises ValueError naming the
    bad parameter."""
    dims = tuple(d.strip() for d in (group_by or "").split(",") if d.strip())
    for d in dims:
        if d not in DIMENSIONS:
            raise ValueError(f"group_by: unknown dimension '{d[:64]}'; use any of {', '.join(DIMENSIONS)}")
    if len(set(dims)) != len(dims):
        raise ValueError("group_by: a dimension is repeated")
    lo = _instant("since", since or DEFAULT_SINCE, now)
    hi = _instant("until", until, now) if until else now
    if hi < lo:
        raise ValueError("until: the end of the range is before its start (since)")
    return SpendQuery(dims, lo, hi)


def _instant(name: str, value: str, now: float) -> float:
    try:
        return parse_instant(value, now)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def merge(rows: Iterable[tuple[Group, Sequence[float]]]) -> dict[Group, list[float]]:
    """Add up rows of the same group (from different segments)."""
    out: dict[Group, list[float]] = {}
    for group, sums in rows:
        have = out.get(group)
        if have is None:
            out[group] = [float(s or 0) for s in sums]
        else:
            for i, s in enumerate(sums):
                have[i] += float(s or 0)
    return out


def _item(names: Sequence[str], group: Group, sums: Sequence[float]) -> dict[str, object]:
    item: dict[str, object] = dict(zip(names, group, strict=True))
    if "day" in item and isinstance(item["day"], int | float):  # a bucket's start: say the date
        item["day"] = rfc3339(float(item["day"]))[:10]
    for name, value in zip(SUMS, sums, strict=True):
        item[name] = int(value) if name in INT_SUMS else round(value, 10)
    return item


def answer(query: SpendQuery, groups: dict[Group, list[float]], total: Sequence[float] | None = None) -> dict[str, object]:
    """The report object, groups by cost (highest first), then by name. `total` defaults to
    the groups' sum; a report by tag must pass it (a record with two tags is in two groups)."""
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1][SUMS.index("cost_usd")], [str(g) for g in kv[0]]))
    if total is None:
        total = [0.0] * len(SUMS)
        for _, sums in ordered:
            total = [a + b for a, b in zip(total, sums, strict=True)]
    return {
        "object": "spend", "group_by": list(query.group_by),
        "since": rfc3339(query.since), "until": rfc3339(query.until),
        "data": [_item(query.group_by, g, s) for g, s in ordered],
        "total": _item((), (), total),
    }

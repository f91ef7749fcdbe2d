"""What both ledger stores do alike around their SQL: which table answers which part of a
report, a report's row back into (group, sums), a batch's rollup rows, and `/admin/requests`'
filters. Each store only says how its database spells them."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import cast

from tollway.core.ledger.periods import DAY, Table, segments
from tollway.core.ledger.report import Group, SpendQuery
from tollway.core.ledger.rollup import SUMS, RollupKey
from tollway.gateway.store import RequestFilter

RollupRow = tuple[int | str | float, ...]  # a rollup row: its identity, then its sums in SUMS order
Cell = str | int | float | Decimal | None  # a value a database returns (PostgreSQL's sum of bigints is a Decimal)


def spend_parts(query: SpendQuery) -> list[tuple[Table, float, float]]:
    """The (table, since, until) pieces a report reads. By tag it reads the raw records alone:
    the rollups keep no tags."""
    return [("raw", query.since, query.until)] if query.by_tag else segments(query.since, query.until)


def spend_rows(rows: Iterable[Sequence[Cell]], dims: int) -> Iterator[tuple[Group, list[float]]]:
    """A segment's result rows (the `dims` group columns, then the sums in SUMS order) as the
    store's answer; the one row an ungrouped aggregate returns over no records is none."""
    for row in rows:
        if not row[dims]:  # COUNT(*) = 0
            continue
        yield cast(Group, tuple(row[:dims])), [float(v or 0) for v in row[dims:]]  # a group's day is a number


def grouped_select(columns: Sequence[str], sums: str, source: str, where: str) -> str:
    """SELECT the group columns and the sums, grouped by the columns."""
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(columns)))}" if columns else ""
    return f"SELECT {', '.join([*columns, sums])} FROM {source} WHERE {where}{group}"


# The rollup tables are alike in both stores: a dimension's expression there ('' back to None), the sums.
_ROLLUP_DIM = {"key": "NULLIF(key, '')", "team": "NULLIF(team, '')", "model": "NULLIF(model, '')",
               "provider": "NULLIF(provider, '')", "day": f"bucket / {DAY:.0f} * {DAY:.0f}"}
_ROLLUP_SUMS = ", ".join(f"SUM({s})" for s in SUMS)


def rollup_select(table: Table, dims: Sequence[str], lo: str, hi: str) -> str:
    """A report's segment from the hourly or daily rollup; `lo` and `hi` are the bounds'
    placeholders in the store's dialect."""
    return grouped_select([_ROLLUP_DIM[d] for d in dims], _ROLLUP_SUMS, f"usage_{table}",
                          f"bucket >= {lo} AND bucket < {hi}")


def rollup_rows(sums: dict[RollupKey, list[float]]) -> list[RollupRow]:
    """The rows to add to a rollup table, in the order of their identity: writers that upsert
    the same rows at once (workers, replicas) then lock them in the same order, never in a cycle."""
    return [(*ident, *s) for ident, s in sorted(sums.items())]


def request_filters(where: RequestFilter) -> list[tuple[str, str, float | str | int]]:
    """`/admin/requests`' conditions as (column, operator, value), all to hold."""
    out: list[tuple[str, str, float | str | int]] = []
    for column in ("key", "team", "model", "status"):
        value = getattr(where, column)
        if value is not None:
            out.append((column, "=", value))
    if where.since is not None:
        out.append(("ts", ">=", where.since))
    if where.until is not None:
        out.append(("ts", "<", where.until))
    return out

"""`tollway usage`: the spend report of `/admin/spend`, read straight from the store."""
from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from typing import IO

import msgspec

from tollway.core import config as config_mod
from tollway.core.ledger.report import SpendQuery, spend_query
from tollway.core.ledger.rollup import SUMS
from tollway.gateway.store import StoreError, build_store
from tollway.gateway.store.reports import spend_report

_TABLE_SUMS = ("requests", "errors", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
               "cost_usd")


def add_parser(sub: argparse._SubParsersAction) -> None:
    usage = sub.add_parser("usage", help="report spend and tokens from the usage ledger")
    usage.add_argument("--config", required=True, metavar="FILE", help="the gateway's config (its store: section)")
    usage.add_argument("--by", default="", metavar="DIMS",
                       help="group by any of key, team, model, provider, day, tag, comma-separated (default: one total)")
    usage.add_argument("--since", default="7d", help="RFC 3339 time or a span before now: 7d, 12h (default: %(default)s)")
    usage.add_argument("--until", default=None, help="RFC 3339 time or a span before now (default: now)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"tollway usage: {exc}", file=sys.stderr)
        return 1
    if config.store is None:
        print(f"tollway usage: {args.config} has no store: section, so there is no ledger to read", file=sys.stderr)
        return 1
    try:
        query = spend_query(args.by, args.since, args.until, time.time())
    except ValueError as exc:
        print(f"tollway usage: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_report(config, args.config, query))
    except StoreError as exc:
        print(f"tollway usage: {exc}", file=sys.stderr)
        return 1
    {"json": _json, "csv": _csv, "table": _table}[args.format](report, sys.stdout)
    return 0


async def _report(config: config_mod.Config, path: str, query: SpendQuery) -> dict[str, object]:
    assert config.store is not None
    store = build_store(config.store, path)
    await store.open()
    try:
        return await spend_report(store, query)
    finally:
        await store.aclose()


def _json(report: dict[str, object], out: IO[str]) -> None:
    out.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")


def _csv(report: dict[str, object], out: IO[str]) -> None:
    dims: list[str] = report["group_by"]  # type: ignore[assignment]
    writer = csv.writer(out)
    writer.writerow([*dims, *SUMS])
    for item in report["data"]:  # type: ignore[attr-defined]
        writer.writerow([_text_cell(item[d]) if item[d] is not None else "" for d in dims] + [item[s] for s in SUMS])


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(value: object) -> object:
    """A text cell as a spreadsheet must take it: as text. A model name or a tag is the client's,
    and one starting like a formula (`=HYPERLINK(...)`) would run when the CSV is opened: it gets
    a leading `'` (OWASP's CSV injection advice). The sums are numbers, never touched."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _table(report: dict[str, object], out: IO[str]) -> None:
    dims: list[str] = report["group_by"]  # type: ignore[assignment]
    header = [*dims, *_TABLE_SUMS]
    rows = [[_cell(item.get(c)) for c in header] for item in report["data"]]  # type: ignore[attr-defined]
    total: dict[str, object] = report["total"]  # type: ignore[assignment]
    rows.append(["TOTAL" if i == 0 else "" for i in range(len(dims))] + [_cell(total[s]) for s in _TABLE_SUMS])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out.write(f"spend from {report['since']} to {report['until']}\n")
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.rjust(w) if i >= len(dims) else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() + "\n")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)

#!/usr/bin/env python3
"""The ledger's stores: how fast they take records, how big a PostgreSQL row is, how long a
month's report takes.

1. write rate: records/s of each store alone (SQLite in a temporary file, PostgreSQL in a
   database of its own), one writer, batches of `--batch` records (the Ledger's default 2000),
   each batch one transaction with its rollup upserts, as the Ledger writes them. The records
   look like the gateway's: 20 keys in 5 teams, 6 models, a third of them tagged, 1 in 10 unpriced.
2. bytes per raw row in PostgreSQL, indexes included: `--rows` records written through the
   store, then pg_total_relation_size of the day partitions (heap, TOAST and the two B-tree
   indexes) over their row count, after VACUUM.
3. the report: `group_by=team,model` over 30 days of `--report-rows` records (20 keys, 5 teams,
   6 models), generated in the server (INSERT ... SELECT generate_series into the raw table,
   the rollups summed from it), then `PostgresStore.spend` for a 30-day range that does not
   start or end on an hour (so raw edges, hourly and daily rollups all answer). For scale, the
   same report summed from the raw rows alone is timed too.

    python bench/ledger_store.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--records 200000] [--rows 1000000] [--report-rows 10000000]

Each PostgreSQL part runs in a fresh database (tollway_bench_*), dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tollway.core.ledger.periods import DAY, segments  # noqa: E402
from tollway.core.ledger.record import UsageRecord  # noqa: E402
from tollway.core.ledger.report import SpendQuery, answer, merge  # noqa: E402
from tollway.gateway.store import LedgerStore  # noqa: E402
from tollway.gateway.store.postgres import PostgresStore  # noqa: E402
from tollway.gateway.store.sqlite import SqliteStore  # noqa: E402

KEYS = [(f"key-{i:02d}", f"team-{i % 5}") for i in range(20)]
MODELS = [("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18"), ("gpt-4o", "openai", "gpt-4o-2024-08-06"),
          ("claude-sonnet", "anthropic", "claude-3-5-sonnet-20241022"), ("llama-3-8b", "vllm", "meta-llama/Meta-Llama-3-8B-Instruct"),
          ("gemini-flash", "vertex", "gemini-1.5-flash-002"), ("embed-small", "openai", "text-embedding-3-small")]


def records(n: int, start: float, span: float, seed: int = 1) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key, team = KEYS[rng.randrange(len(KEYS))]
        model, provider, upstream = MODELS[rng.randrange(len(MODELS))]
        stream = rng.random() < 0.6
        status = 200 if rng.random() < 0.97 else 429
        out.append(UsageRecord(
            ts=start + span * i / n, request_id="req_" + rng.randbytes(12).hex(), key=key, key_id="config:" + key,
            team=team, model=model, provider=provider, upstream_model=upstream,
            api="embeddings" if model.startswith("embed") else "chat", status=status,
            error="rate_limited" if status == 429 else None, stream=stream,
            input_tokens=rng.randrange(20, 8000), cached_input_tokens=rng.choice([0, 0, 1024]),
            cache_write_tokens=0, output_tokens=rng.randrange(0, 1500), reasoning_tokens=rng.choice([0, 0, 0, 256]),
            cost_usd=None if rng.random() < 0.1 else rng.random() / 50,
            latency_ms=round(rng.uniform(80, 9000), 3), ttft_ms=round(rng.uniform(50, 900), 3) if stream else None,
            attempts=1, cache_hit=False, tags=("env:prod", "feature=search") if rng.random() < 0.33 else (),
            trace_id=rng.randbytes(16).hex()))
    return out


@asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    name = f"tollway_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


async def write_rate(store: LedgerStore, recs: list[UsageRecord], batch: int) -> float:
    await store.write(recs[:batch])  # warm up: connections, partitions, statements
    started = time.perf_counter()
    for i in range(batch, len(recs), batch):
        await store.write(recs[i:i + batch])
    return (len(recs) - batch) / (time.perf_counter() - started)


async def row_bytes(url: str) -> tuple[int, int, dict[str, int]]:
    """(rows, bytes of the raw partitions with their indexes, bytes per part)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE usage_records")
        parts = [r[0] for r in await conn.fetch(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_records'::regclass")]
        rows = sum([await conn.fetchval(f"SELECT count(*) FROM {p}") for p in parts])
        total = heap = 0
        by_index: dict[str, int] = {}
        for p in parts:
            total += await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", p)
            heap += await conn.fetchval("SELECT pg_table_size($1::regclass)", p)
            for name, size in await conn.fetch(
                    "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
                    "WHERE indrelid = $1::regclass", p):
                kind = "btree(key, ts)" if "key" in name else "btree(ts)"
                by_index[kind] = by_index.get(kind, 0) + size
        return rows, total, {"heap (with TOAST)": heap, **by_index}
    finally:
        await conn.close()


GENERATE = """
INSERT INTO usage_records (ts, request_id, key, key_id, team, model, provider, upstream_model, api, status, error,
    stream, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_usd,
    latency_ms, ttft_ms, attempts, cache_hit, tags, trace_id)
SELECT $1::timestamptz + (i * $3::float8 / $2::int8) * interval '1 second',
    'req_' || substr(md5(i::text), 1, 24), 'key-' || lpad((i % 20)::text, 2, '0'),
    'config:key-' || lpad((i % 20)::text, 2, '0'), 'team-' || (i % 20 % 5),
    (ARRAY['gpt-4o-mini','gpt-4o','claude-sonnet','llama-3-8b','gemini-flash','embed-small'])[1 + (i / 20) % 6],
    (ARRAY['openai','openai','anthropic','vllm','vertex','openai'])[1 + (i / 20) % 6],
    (ARRAY['gpt-4o-mini-2024-07-18','gpt-4o-2024-08-06','claude-3-5-sonnet-20241022',
           'meta-llama/Meta-Llama-3-8B-Instruct','gemini-1.5-flash-002','text-embedding-3-small'])[1 + (i / 20) % 6],
    'chat', CASE WHEN i % 33 = 0 THEN 429 ELSE 200 END, CASE WHEN i % 33 = 0 THEN 'rate_limited' END,
    i % 5 < 3, 20 + (i * 7919) % 8000, CASE WHEN i % 3 = 0 THEN 1024 ELSE 0 END, 0, (i * 104729) % 1500,
    CASE WHEN i % 4 = 0 THEN 256 ELSE 0 END, CASE WHEN i % 10 = 0 THEN NULL ELSE ((i * 31) % 2000) / 100000.0 END,
    80 + (i * 13) % 9000, CASE WHEN i % 5 < 3 THEN 50 + (i * 17) % 900 END, 1, false,
    CASE WHEN i % 3 = 0 THEN ARRAY['env:prod', 'feature=search'] END, md5((i * 7)::text)
FROM generate_series($4::int8, $5::int8) AS i
"""

ROLLUP = """
INSERT INTO usage_{table} SELECT floor(extract(epoch FROM ts) / {step})::int8 * {step}, coalesce(key, ''),
    coalesce(key_id, ''), coalesce(team, ''), coalesce(model, ''), coalesce(provider, ''), count(*),
    count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL), count(*) FILTER (WHERE cost_usd IS NULL),
    sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens),
    coalesce(sum(cost_usd), 0)
FROM usage_records GROUP BY 1, 2, 3, 4, 5, 6
"""

RAW_REPORT = """
SELECT team, model, count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
    count(*) FILTER (WHERE cost_usd IS NULL), sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens),
    sum(output_tokens), sum(reasoning_tokens), coalesce(sum(cost_usd), 0)
FROM usage_records WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2
"""


async def report(url: str, rows: int, runs: int) -> dict[str, float]:
    now = time.time()
    end = datetime.fromtimestamp(now // DAY * DAY, UTC)  # today's start: 30 whole days before it
    start = end - timedelta(days=30)
    store = PostgresStore(url)
    await store.open()
    out: dict[str, float] = {}
    try:
        days = {(start + timedelta(days=i)).date() for i in range(31)}
        await store._call(lambda conn: store._ensure_days(conn, days))  # the partitions the rows go to
        conn = await asyncpg.connect(url)
        try:
            t0 = time.perf_counter()
            step = 1_000_000
            for lo in range(0, rows, step):
                await conn.execute(GENERATE, start, rows, 30 * DAY, lo, min(lo + step, rows) - 1, timeout=3600)
            out["generate raw s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for table, step_s in (("hourly", 3600), ("daily", 86400)):
                await conn.execute(ROLLUP.format(table=table, step=step_s), timeout=3600)
            await conn.execute("VACUUM ANALYZE", timeout=3600)
            out["rollups+vacuum s"] = time.perf_counter() - t0
            out["rows"] = await conn.fetchval("SELECT count(*) FROM usage_records")
            out["hourly rollup rows"] = await conn.fetchval("SELECT count(*) FROM usage_hourly")
            out["daily rollup rows"] = await conn.fetchval("SELECT count(*) FROM usage_daily")
        finally:
            await conn.close()

        # 30 days ending mid-hour: raw edges (two partial hours), hourly and daily rollups.
        since, until = start.timestamp() + 37 * 60 + 11.5, start.timestamp() + 30 * DAY - 23 * 60 - 0.25
        out["segments"] = len(segments(since, until))
        query = SpendQuery(("team", "model"), since, until)
        times = []
        result: dict[str, object] = {}
        for _ in range(runs):
            t0 = time.perf_counter()
            result = answer(query, merge(await store.spend(query)))
            times.append(time.perf_counter() - t0)
        out["report first ms"] = times[0] * 1000
        out["report median ms"] = statistics.median(times) * 1000
        out["report groups"] = len(result["data"])  # type: ignore[arg-type]
        out["report requests"] = result["total"]["requests"]  # type: ignore[index]

        conn = await asyncpg.connect(url, server_settings={"jit": "off"})
        try:
            t0 = time.perf_counter()
            raw = await conn.fetch(RAW_REPORT, datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC),
                                   timeout=3600)
            out["same report from raw rows ms"] = (time.perf_counter() - t0) * 1000
            assert sum(r[2] for r in raw) == out["report requests"], "rollups and raw rows disagree"
        finally:
            await conn.close()
    finally:
        await store.aclose()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("TOLLWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--records", type=int, default=200_000, help="records per store for the write rate")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows for bytes per row")
    ap.add_argument("--report-rows", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7, help="report runs (the first is cold)")
    args = ap.parse_args()
    now = time.time()

    print(f"1. write rate, batches of {args.batch}, one writer")
    recs = records(args.records, now - 3600, 3600)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(os.path.join(tmp, "ledger.db"))
        await sqlite.open()
        print(f"   sqlite    {await write_rate(sqlite, recs, args.batch):>9,.0f} records/s")
        await sqlite.aclose()
    async with fresh_database(args.url) as url:
        pg = PostgresStore(url)
        await pg.open()
        print(f"   postgres  {await write_rate(pg, recs, args.batch):>9,.0f} records/s")
        await pg.aclose()

    print(f"2. PostgreSQL bytes per raw row, {args.rows:,} records written through the store over one day")
    async with fresh_database(args.url) as url:
        pg = PostgresStore(url)
        await pg.open()
        recs = records(args.rows, now - 86400 // 2, 3600 * 12, seed=2)
        for i in range(0, len(recs), args.batch):
            await pg.write(recs[i:i + args.batch])
        del recs
        await pg.aclose()
        rows, total, parts = await row_bytes(url)
        print(f"   {rows:,} rows, {total / 2**20:,.1f} MiB: {total / rows:.1f} B/row, indexes included")
        for part, size in parts.items():
            print(f"     {part:<18} {size / rows:6.1f} B/row")

    print(f"3. 30-day group_by=team,model report over {args.report_rows:,} rows")
    async with fresh_database(args.url) as url:
        for name, value in (await report(url, args.report_rows, args.runs)).items():
            print(f"   {name:<30} {value:,.1f}")


if __name__ == "__main__":
    asyncio.run(main())

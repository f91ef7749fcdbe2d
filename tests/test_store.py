"""The ledger stores, SQLite and PostgreSQL, held to the same answers: what is written reads
back whole, reports add up to what a brute-force sum over the written records says (whichever
of the raw rows and the rollups answer), retention removes raw rows only, the schema is
versioned, and a PostgreSQL that goes away and comes back loses nothing the Ledger could keep.

Each PostgreSQL test runs in a database of its own (tests/pg_databases.py). Without a server
they are skipped, unless TOLLWAY_REQUIRE_POSTGRES is set (CI sets it): then they fail.
"""
from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from tests.pg_databases import PG_URL, need_postgres, pg_database, target  # noqa: F401 - fixtures by name
from tests.pg_instance import PgInstance, pg_bin
from tollway.core.config import Ledger as LedgerConfig
from tollway.core.ledger.periods import DAY, HOUR, segments
from tollway.core.ledger.record import UsageRecord
from tollway.core.ledger.report import SpendQuery, answer, merge
from tollway.core.ledger.rollup import SUMS, is_error
from tollway.gateway.store import LedgerStore, RequestFilter, SchemaTooNew, StoreError
from tollway.gateway.store.ledger import Ledger, LedgerCounters
from tollway.gateway.store.postgres import VERSION as PG_VERSION
from tollway.gateway.store.postgres import PostgresStore, redact
from tollway.gateway.store.sqlite import VERSION as SQLITE_VERSION
from tollway.gateway.store.sqlite import SqliteStore

BASE = 1_764_460_800.0  # 2025-11-30T00:00:00Z


def _make(target: str) -> LedgerStore:
    return PostgresStore(target) if target.startswith("postgresql://") else SqliteStore(target)


@pytest.fixture
async def store(target: str) -> AsyncIterator[LedgerStore]:
    s = _make(target)
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


# -- records and the brute-force answers ------------------------------------------------

KEYS = [("alice", "team-a"), ("bob", "team-a"), ("carol", "team-b"), ("dave", None), (None, None)]
MODELS = [("gpt-4o", "openai"), ("claude", "anthropic"), ("llama", "vllm"), (None, None)]
TAGS = ["env:prod", "env:dev", "feature=search", "batch"]


def _records(n: int, start: float, span: float, seed: int = 7) -> list[UsageRecord]:
    rng = random.Random(seed)
    times = sorted(rng.sample(range(int(span * 1000)), n))  # distinct, to the millisecond
    out = []
    for i, t in enumerate(times):
        key, team = rng.choice(KEYS)
        model, provider = rng.choice(MODELS)
        status = rng.choice([200] * 8 + [429, 502])
        stream = rng.random() < 0.5
        out.append(UsageRecord(
            ts=round(start + t / 1000, 3), request_id=f"req-{seed}-{i}", key=key, key_id=f"config:{key}" if key else None,
            team=team, model=model, provider=provider, upstream_model=f"{model}-2025" if model else None,
            api=rng.choice(["chat", "embeddings", "messages"]), status=status,
            error="rate_limited" if status == 429 else None, stream=stream,
            input_tokens=rng.randrange(0, 5000), cached_input_tokens=rng.randrange(0, 100),
            cache_write_tokens=rng.randrange(0, 50), output_tokens=rng.randrange(0, 2000),
            reasoning_tokens=rng.randrange(0, 300),
            cost_usd=None if rng.random() < 0.1 else round(rng.random() / 100, 8),
            latency_ms=round(rng.uniform(1, 9000), 3), ttft_ms=round(rng.uniform(1, 500), 3) if stream else None,
            attempts=rng.randrange(1, 4), cache_hit=rng.random() < 0.2,
            tags=tuple(rng.sample(TAGS, rng.randrange(0, 3))), trace_id=f"{rng.getrandbits(128):032x}"))
    return out


def _brute(records: Sequence[UsageRecord], query: SpendQuery) -> dict[tuple[object, ...], list[float]]:
    out: dict[tuple[object, ...], list[float]] = {}
    for r in records:
        if not query.since <= r.ts < query.until:
            continue
        values = {"key": r.key, "team": r.team, "model": r.model, "provider": r.provider, "day": int(r.ts // DAY * DAY)}
        groups = [tuple(values[d] for d in query.group_by)] if not query.by_tag else [
            tuple(tag if d == "tag" else values[d] for d in query.group_by) for tag in (r.tags or (None,))]
        for g in groups:
            sums = out.setdefault(g, [0.0] * len(SUMS))
            for i, v in enumerate((1, is_error(r), r.cost_usd is None, r.input_tokens, r.cached_input_tokens,
                                   r.cache_write_tokens, r.output_tokens, r.reasoning_tokens, r.cost_usd or 0.0)):
                sums[i] += v
    return out


def _same_report(got: dict[str, object], want: dict[str, object]) -> None:
    """Two answers alike: the same groups and counts, costs equal to float rounding."""
    def by_group(report: dict[str, object]) -> dict[tuple[object, ...], dict[str, object]]:
        names = report["group_by"]
        return {tuple(item[n] for n in names): item for item in report["data"]}  # type: ignore[index, union-attr]

    g, w = by_group(got), by_group(want)
    assert g.keys() == w.keys()
    for group, item in w.items():
        assert {k: v for k, v in g[group].items() if k != "cost_usd"} == {k: v for k, v in item.items() if k != "cost_usd"}
        assert g[group]["cost_usd"] == pytest.approx(item["cost_usd"], abs=1e-9)
    assert got["total"]["cost_usd"] == pytest.approx(want["total"]["cost_usd"], abs=1e-9)  # type: ignore[index]
    assert {k: v for k, v in got["total"].items() if k != "cost_usd"} == \
        {k: v for k, v in want["total"].items() if k != "cost_usd"}  # type: ignore[union-attr]


async def _check_spend(store: LedgerStore, records: Sequence[UsageRecord], query: SpendQuery) -> dict[str, object]:
    got_groups = merge(await store.spend(query))
    total = None
    if query.by_tag:  # a record with two tags is in two groups: the total comes from a report of no dimension
        total = merge(await store.spend(SpendQuery((), query.since, query.until))).get((), [0.0] * len(SUMS))
    got = answer(query, got_groups, total)
    want_total = _brute(records, SpendQuery((), query.since, query.until)).get((), [0.0] * len(SUMS))
    want = answer(query, _brute(records, query), want_total if query.by_tag else None)
    _same_report(got, want)
    return got


# -- round trip -------------------------------------------------------------------------

async def test_every_field_reads_back(store: LedgerStore):
    full = UsageRecord(
        ts=BASE + 123.456789, request_id="req-full", key="alice", key_id="config:alice", team="team-a", model="gpt-4o",
        provider="openai", upstream_model="gpt-4o-2024-08-06", api="chat", status=200, error=None, stream=True,
        input_tokens=1_000_000, cached_input_tokens=12, cache_write_tokens=3, output_tokens=456, reasoning_tokens=78,
        cost_usd=0.000123456789, latency_ms=1234.567, ttft_ms=89.012, attempts=2, cache_hit=True,
        tags=("env:prod", "feature=search"), trace_id="0af7651916cd43dd8448eb211c80319c",
        guardrails={"pii": {"credit_card": 2, "email": 1}, "internal-projects": {"regex": 1}})
    bare = UsageRecord(
        ts=BASE + 200.0, request_id="req-bare", key=None, key_id=None, team=None, model=None, provider=None,
        upstream_model=None, api="embeddings", status=502, error="upstream_error", stream=False)
    await store.write([full, bare])
    got = await store.requests(RequestFilter())
    assert [r.request_id for r in got] == ["req-bare", "req-full"]
    for have, want in zip(got, [bare, full]):
        assert have.ts == pytest.approx(want.ts, abs=1e-6)  # PostgreSQL keeps microseconds
        assert {f: getattr(have, f) for f in UsageRecord.__struct_fields__ if f != "ts"} == \
            {f: getattr(want, f) for f in UsageRecord.__struct_fields__ if f != "ts"}


async def test_values_like_a_stores_null_stand_ins_read_back_as_they_were(store: LedgerStore):
    """The SQLite store binds a None as 0 (text columns) or an empty blob (number columns) that
    NULLIF turns back: a text "0" or "", a cost or a time of 0, stay what they were."""
    edge = UsageRecord(
        ts=BASE + 1.0, request_id="0", key="0", key_id="", team="0", model="", provider="0", upstream_model="",
        api="chat", status=0, error="0", stream=True, cost_usd=0.0, latency_ms=0.0, ttft_ms=0.0, attempts=0,
        tags=("0",), trace_id="")
    await store.write([edge])
    (have,) = await store.requests(RequestFilter())
    assert {f: getattr(have, f) for f in UsageRecord.__struct_fields__} == \
        {f: getattr(edge, f) for f in UsageRecord.__struct_fields__}
    assert type(have.cost_usd) is float and type(have.ttft_ms) is float


async def test_a_batch_holding_one_such_record_goes_in_whole_with_its_rollups(store: LedgerStore):
    """The other records of its batch go in as they are (PostgreSQL: the batch is refused, then
    written again with the odd record held to its columns), and the rollups count them all."""
    good = _records(6, BASE, 60, seed=11)
    odd = msgspec.structs.replace(good[3], model="gpt\x00evil", input_tokens=2**40, status=200, error=None)
    batch = [*good[:3], odd, *good[4:]]
    await store.write(batch)
    got = {r.request_id: r for r in await store.requests(RequestFilter())}
    assert set(got) == {r.request_id for r in batch}
    assert all(got[r.request_id] == r for r in batch if r is not odd)
    held = 2**31 - 1 if store.backend == "postgres" else 2**40
    assert got[odd.request_id].input_tokens == held
    (total,) = merge(await store.spend(SpendQuery((), BASE - DAY, BASE + DAY))).values()
    assert total[SUMS.index("requests")] == 6
    assert total[SUMS.index("input_tokens")] == sum(r.input_tokens for r in batch if r is not odd) + held


async def test_a_record_the_database_would_refuse_does_not_stop_the_ledger(store: LedgerStore):
    """PostgreSQL's text holds no NUL and its columns have ranges: such a record still goes in
    (with U+FFFD for NUL, and counts held to the column), or its batch would fail for ever."""
    odd = _records(1, BASE, 1)[0]
    odd = msgspec.structs.replace(odd, model="gpt\x00evil", input_tokens=2**40, output_tokens=-(2**40), status=70000)
    await store.write([odd])
    await store.write(_records(2, BASE + 10, 1, seed=3))
    got = {r.request_id: r for r in await store.requests(RequestFilter())}
    assert len(got) == 3
    back = got[odd.request_id]
    if store.backend == "postgres":
        assert (back.model, back.input_tokens, back.output_tokens, back.status) == ("gpt\ufffdevil", 2**31 - 1, -(2**31 - 1), 2**15 - 1)
    else:
        assert back == odd


async def test_an_empty_batch_is_nothing(store: LedgerStore):
    await store.write([])
    assert await store.requests(RequestFilter()) == []
    assert merge(await store.spend(SpendQuery((), BASE, BASE + DAY))) == {}


# -- reports ----------------------------------------------------------------------------

SPAN = 3 * DAY + 9 * HOUR  # records from BASE - 6h to past BASE + 3 days


@pytest.fixture
async def written(store: LedgerStore) -> list[UsageRecord]:
    records = _records(3000, BASE - 6 * HOUR, SPAN)
    for i in range(0, len(records), 700):  # several batches: the rollups add up across them
        await store.write(records[i:i + 700])
    return records


# A range that crosses every kind of segment: raw minutes, hourly hours, daily days, and back.
SINCE, UNTIL = BASE - 5 * HOUR - 17 * 60 - 3.5, BASE + 2 * DAY + 7 * HOUR + 43 * 60 + 0.25


def test_the_range_crosses_raw_hourly_and_daily_segments():
    assert {t for t, _, _ in segments(SINCE, UNTIL)} == {"raw", "hourly", "daily"}


@pytest.mark.parametrize("group_by", [(), ("key",), ("team",), ("model",), ("provider",), ("day",),
                                      ("team", "model"), ("key", "provider", "day"), ("model", "team", "key", "provider")])
async def test_spend_matches_a_brute_force_sum(store: LedgerStore, written: list[UsageRecord], group_by: tuple[str, ...]):
    report = await _check_spend(store, written, SpendQuery(group_by, SINCE, UNTIL))
    assert report["total"]["requests"] > 1000  # type: ignore[index]


async def test_spend_over_whole_days_hours_and_minutes(store: LedgerStore, written: list[UsageRecord]):
    for since, until in [(BASE, BASE + 2 * DAY), (BASE + HOUR, BASE + 5 * HOUR), (BASE + 61.5, BASE + 1000.25),
                         (BASE - 6 * HOUR, BASE + 4 * DAY), (BASE + 5 * DAY, BASE + 6 * DAY)]:
        await _check_spend(store, written, SpendQuery(("team", "model"), since, until))


async def test_a_record_half_a_microsecond_before_an_hour_is_counted_once_in_that_hour(store: LedgerStore):
    """PostgreSQL keeps a time to the microsecond: a record 0.3 us before an hour is stored at
    the hour. Its rollups must say the same hour, or a report that reads the rows of one side of
    the hour and the rollups of the other loses it or counts it twice. (SQLite keeps the time
    as it is, rows and rollups alike.)"""
    hour = BASE + 2 * HOUR
    times = (hour - 3e-7, hour - 7e-7, hour + 10.0, BASE + HOUR + 5.0)
    records = [msgspec.structs.replace(r, ts=t) for r, t in zip(_records(len(times), BASE, HOUR), times, strict=True)]
    await store.write(records)
    if store.backend == "postgres":
        kept = [msgspec.structs.replace(r, ts=round(r.ts * 1e6) / 1e6) for r in records]
        assert [r.ts for r in kept][:2] == [hour, hour - 1e-6]
    else:
        kept = records
    for since, until in [(BASE + 1.5 * HOUR, BASE + 3 * HOUR), (BASE, BASE + 2.5 * HOUR), (BASE, hour),
                         (hour, BASE + 4 * HOUR), (BASE - DAY, BASE + DAY)]:  # rows on one side, rollups the other
        await _check_spend(store, kept, SpendQuery((), since, until))


async def test_spend_from_and_to_beyond_what_a_datetime_holds(store: LedgerStore, written: list[UsageRecord]):
    query = SpendQuery(("model",), BASE - 1e11 - 0.5, BASE + 1e12 + 0.5)  # years -1200 to 33000
    got = merge(await store.spend(query))
    want = _brute(written, query)
    assert got.keys() == want.keys()
    for group, sums in want.items():
        assert got[group] == pytest.approx(sums)


@pytest.mark.parametrize("group_by", [("tag",), ("tag", "model"), ("day", "tag")])
async def test_spend_by_tag(store: LedgerStore, written: list[UsageRecord], group_by: tuple[str, ...]):
    report = await _check_spend(store, written, SpendQuery(group_by, SINCE, UNTIL))
    # an untagged record counts once, under tag null, so a report by tag adds up to the whole
    assert {item["tag"] for item in report["data"]} == {*TAGS, None}  # type: ignore[index, union-attr]


# -- /admin/requests --------------------------------------------------------------------

@pytest.mark.parametrize("where", [
    RequestFilter(), RequestFilter(limit=7), RequestFilter(key="alice"), RequestFilter(team="team-b", limit=1000),
    RequestFilter(model="claude", status=429), RequestFilter(since=BASE, until=BASE + HOUR, limit=1000),
    RequestFilter(key="bob", since=BASE + DAY, limit=20), RequestFilter(key="nobody"),
])
async def test_requests_filter_and_order(store: LedgerStore, written: list[UsageRecord], where: RequestFilter):
    want = [r for r in sorted(written, key=lambda r: -r.ts)
            if all(getattr(where, f) is None or getattr(r, f) == getattr(where, f) for f in ("key", "team", "model", "status"))
            and (where.since is None or r.ts >= where.since) and (where.until is None or r.ts < where.until)][:where.limit]
    got = await store.requests(where)
    assert [r.request_id for r in got] == [r.request_id for r in want]


# -- retention --------------------------------------------------------------------------

async def test_prune_removes_old_raw_rows_and_keeps_the_rollups(store: LedgerStore, written: list[UsageRecord]):
    before = BASE + DAY  # a day boundary: SQLite deletes by row, PostgreSQL drops whole days
    old = [r for r in written if r.ts < before]
    assert await store.prune(before) == len(old)
    left = await store.requests(RequestFilter(limit=10_000))
    assert sorted(r.request_id for r in left) == sorted(r.request_id for r in written if r.ts >= before)
    # Whole hours and days of the pruned range still answer, from the rollups.
    await _check_spend(store, written, SpendQuery(("key", "model", "day"), BASE - 6 * HOUR, BASE + 3 * DAY))
    assert await store.prune(before) == 0
    await store.write(_records(10, BASE - 2 * DAY, HOUR, seed=8))  # a day already pruned takes records again
    assert len(await store.requests(RequestFilter(until=before, limit=100))) == 10


# -- schema -----------------------------------------------------------------------------

async def _version(target: str) -> list[int]:
    if target.startswith("postgresql://"):
        conn = await asyncpg.connect(target)
        try:
            return [r[0] for r in await conn.fetch("SELECT version FROM tollway_schema")]
        finally:
            await conn.close()
    with sqlite3.connect(target) as db:
        return [r[0] for r in db.execute("SELECT version FROM tollway_schema")]


async def _set_version(target: str, version: int) -> None:
    if target.startswith("postgresql://"):
        conn = await asyncpg.connect(target)
        try:
            await conn.execute("UPDATE tollway_schema SET version = $1", version)
        finally:
            await conn.close()
        return
    db = sqlite3.connect(target)
    db.execute("UPDATE tollway_schema SET version = ?", (version,))
    db.commit()
    db.close()


async def test_migrations_make_the_schema_once_and_refuse_a_newer_one(target: str):
    version = PG_VERSION if target.startswith("postgresql://") else SQLITE_VERSION
    first = _make(target)
    await first.open()
    assert await _version(target) == [version]
    record = _records(1, BASE, 10)
    await first.write(record)
    await first.aclose()

    again = _make(target)  # re-opening is a no-op: same version, the records still there
    await again.open()
    assert await _version(target) == [version]
    assert [r.request_id for r in await again.requests(RequestFilter())] == [record[0].request_id]
    await again.aclose()

    await _set_version(target, version + 1)
    newer = _make(target)
    with pytest.raises(SchemaTooNew, match=f"schema version {version + 1}, newer than this gateway knows"):
        await newer.open()
    await newer.aclose()


async def test_a_sqlite_store_in_memory_writes_and_reports_its_records():
    """`path: ":memory:"`: the store's connections (schema, the writer's, the reports') share
    one in-memory database (each opening ":memory:" would get an empty one of its own)."""
    store, other = SqliteStore(":memory:"), SqliteStore(":memory:")
    await store.open()
    await other.open()
    try:
        records = _records(30, BASE, 7200)
        await store.write(records)
        got = await store.requests(RequestFilter(limit=100))
        assert sorted(r.request_id for r in got) == sorted(r.request_id for r in records)
        await _check_spend(store, records, SpendQuery(("key", "model"), BASE, BASE + 7200))
        assert await other.requests(RequestFilter()) == []  # (another store's database is its own)
    finally:
        await store.aclose()
        await other.aclose()


def test_sqlite_stores_opening_one_new_file_at_once_all_open(tmp_path):
    """The workers of `--workers N` open one new file at once: SQLite answers one of two
    connections that would wait on each other "database is locked" at once, without its busy
    wait (a worker then ran without its key store: the admin API said 503). Every open succeeds."""
    import threading

    failed: list[str] = []
    for round_ in range(100):
        path = str(tmp_path / f"ledger{round_}.db")
        stores = [SqliteStore(path) for _ in range(4)]
        together = threading.Barrier(len(stores))

        def open_(store: SqliteStore) -> None:
            together.wait()
            try:
                store._open()
            except StoreError as exc:
                failed.append(str(exc))

        threads = [threading.Thread(target=open_, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for store in stores:
            for connection in (store._db, store._rdb, store._rows):
                if connection is not None:
                    connection.close()
    assert failed == []


async def test_a_sqlite_store_that_refuses_a_newer_schema_leaves_no_connection_open(tmp_path):
    """The connection that found the newer schema is closed again (the gateway goes on without
    a ledger, and retrying or reloading must not pile up open files)."""
    path = tmp_path / "ledger.db"
    first = SqliteStore(str(path))
    await first.open()
    await first.aclose()
    await _set_version(str(path), SQLITE_VERSION + 1)

    def open_files() -> int:
        return sum(os.path.realpath(f"/proc/self/fd/{fd}").startswith(str(path)) for fd in os.listdir("/proc/self/fd"))

    newer = SqliteStore(str(path))
    with pytest.raises(SchemaTooNew):
        await newer.open()
    assert open_files() == 0
    await newer.aclose()


async def test_stores_opening_a_fresh_postgres_database_at_once_all_succeed(pg_database: str):
    stores = [PostgresStore(pg_database) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await _version(pg_database) == [PG_VERSION]
        # And they make a new day's partition at once without tripping on each other.
        await asyncio.gather(*(s.write(_records(20, BASE + 40 * DAY, DAY, seed=i)) for i, s in enumerate(stores)))
        assert len(await stores[0].requests(RequestFilter(limit=1000))) == 80
    finally:
        for s in stores:
            await s.aclose()


# -- PostgreSQL's failures --------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://postgres:s3cret-pw@127.0.0.1:1/tollway",  # nothing listens
    "postgresql://postgres:s3cret-pw@{host}:{port}/tollway_no_such_database",  # the server says no
    "postgresql://postgres@{host}:{port}/tollway_no_such_database?password=s3cret-pw",
])
async def test_a_failure_is_a_store_error_without_the_password(url: str):
    if "{host}" in url:
        need_postgres()
        parts = urlsplit(PG_URL)
        url = url.format(host=parts.hostname, port=parts.port or 5432)
    store = PostgresStore(url)
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert time.monotonic() - started < 8  # a dead database fails fast
    assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)
    await store.aclose()


def test_redact_hides_every_password():
    assert redact("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db?sslmode=require&password=pw") == "postgresql://u@h/db?sslmode=require&password=***"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_a_closed_store_says_so():
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/x")
    with pytest.raises(StoreError, match="not open"):
        await store.write(_records(1, BASE, 1))


async def test_the_ledger_keeps_records_while_postgres_is_down_and_writes_them_when_it_is_back():
    bin_dir = pg_bin()
    if bin_dir is None:
        if os.environ.get("TOLLWAY_REQUIRE_POSTGRES"):
            pytest.fail("TOLLWAY_REQUIRE_POSTGRES is set and PostgreSQL's binaries (initdb, pg_ctl) are not installed")
        pytest.skip("PostgreSQL's binaries (initdb, pg_ctl) are not installed")
    instance = await asyncio.to_thread(PgInstance, bin_dir)
    try:
        await asyncio.to_thread(instance.start)
        store = PostgresStore(instance.url)
        await store.open()
        registry = CollectorRegistry()
        counters = LedgerCounters(registry)
        config = LedgerConfig(buffer_records=50, batch_records=10, flush_interval=0.02)
        ledger = Ledger(store, config, counters)
        ledger.start(asyncio.get_running_loop())
        records = _records(90, time.time() - 60, 50, seed=11)

        async def written(n: int, timeout: float = 20) -> None:
            deadline = time.monotonic() + timeout
            while registry.get_sample_value("tollway_ledger_written_total") != n:
                assert time.monotonic() < deadline, f"written: {registry.get_sample_value('tollway_ledger_written_total')}"
                await asyncio.sleep(0.05)

        for r in records[:10]:
            ledger.submit(r)
        await written(10)

        await asyncio.to_thread(instance.stop)
        started = time.perf_counter()
        for r in records[10:40]:
            ledger.submit(r)
        submitting = time.perf_counter() - started
        await asyncio.sleep(0.5)  # the writer tries, fails, and keeps them
        started = time.perf_counter()
        for r in records[40:]:
            ledger.submit(r)
        submitting += time.perf_counter() - started
        assert submitting < 0.05  # 80 submits: appends to a queue, never a wait for the database
        assert ledger.queued == 50
        assert registry.get_sample_value("tollway_ledger_dropped_total") == 30
        assert registry.get_sample_value("tollway_ledger_write_errors_total") >= 1

        await asyncio.to_thread(instance.start)
        await written(60)
        got = await store.requests(RequestFilter(limit=1000))
        assert sorted(r.request_id for r in got) == sorted(r.request_id for r in records[:60])
        await ledger.close(5)
    finally:
        await asyncio.to_thread(instance.destroy)


async def test_a_value_asyncpg_cannot_send_is_the_records_fault_and_named_as_such(pg_database: str):
    # asyncpg's client-side DataError is also a ValueError and an InterfaceError: neither a bad
    # store URL (as a ValueError at connect is) nor the database being down.
    from tollway.gateway.store import Refused
    store = PostgresStore(pg_database)
    await store.open()
    try:
        async def encode_fails(conn: object) -> None:
            raise asyncpg.exceptions._base.DataError("invalid input for query argument $3: 9999999999999999999999")

        with pytest.raises(Refused) as refused:
            await store._call(encode_fails)
        assert "not a valid PostgreSQL URL" not in str(refused.value) and "argument $3" in str(refused.value)
    finally:
        await store.aclose()


async def test_a_batch_refused_for_a_value_no_fit_repairs_is_refused_once_fitted_too(pg_database: str):
    """A latency past float4 is nothing _fit holds to a range: the batch is refused (the ledger
    then writes it record by record, dropping that one), after one try with the batch fitted."""
    from tollway.gateway.store import Refused
    store = PostgresStore(pg_database)
    await store.open()
    calls = 0
    inner = store._write_batch

    async def counted(records: list[UsageRecord]) -> None:
        nonlocal calls
        calls += 1
        await inner(records)

    store._write_batch = counted  # type: ignore[method-assign]
    try:
        records = _records(3, BASE, 1, seed=5)
        with pytest.raises(Refused):
            await store.write([*records[:2], msgspec.structs.replace(records[2], latency_ms=1e300)])
        assert calls == 1  # (nothing to fit: not written again)
        odd = msgspec.structs.replace(records[2], latency_ms=1e300, input_tokens=2**40)
        with pytest.raises(Refused):
            await store.write([*records[:2], odd])
        assert calls == 3  # (fitted once, refused again)
        assert await store.requests(RequestFilter()) == []
    finally:
        await store.aclose()


async def test_a_partition_too_big_to_count_in_time_is_dropped_all_the_same(pg_database: str, monkeypatch):
    # A busy day's count could outlast the statement timeout every hour and retention would
    # never drop it: past _COUNT_TIMEOUT the count is cancelled, the prune reports the planner's
    # estimate and drops the day in the same transaction. Here a reader's lock holds the count
    # up (a stand-in for a huge day) until after the count's timeout, then lets the drop go.
    import tollway.gateway.store.postgres as pg
    monkeypatch.setattr(pg, "_COUNT_TIMEOUT", 0.3)
    store = PostgresStore(pg_database)
    await store.open()
    blocker = await asyncpg.connect(pg_database)
    try:
        old = BASE - 30 * DAY
        await store.write(_records(50, old, 60, seed=3))
        name = next(iter(await blocker.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE 'usage_records_%'"
                                             " ORDER BY tablename LIMIT 1")))["tablename"]
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")

        async def release() -> None:
            await asyncio.sleep(1.0)  # past the count's 0.3 s, well before the drop's 3 s lock_timeout
            await hold.commit()

        releasing = asyncio.create_task(release())
        assert await store.prune(old + DAY) >= 0
        await releasing
        assert await store.requests(RequestFilter(until=old + DAY)) == []
        assert await store.prune(old + DAY) == 0  # gone, not merely emptied
    finally:
        await blocker.close()
        await store.aclose()


async def test_a_partition_another_replica_dropped_is_made_again(pg_database: str):
    one, other = PostgresStore(pg_database), PostgresStore(pg_database)
    await one.open()
    await other.open()
    try:
        old = BASE - 30 * DAY
        await one.write(_records(5, old, HOUR, seed=1))  # `one` now knows that day's partition
        assert await other.prune(old + DAY) == 5  # ... which `other` drops
        await one.write(_records(5, old, HOUR, seed=2))
        assert len(await one.requests(RequestFilter(until=old + DAY))) == 5
    finally:
        await one.aclose()
        await other.aclose()

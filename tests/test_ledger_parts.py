"""The ledger's parts without a server: tags, calendar periods, report ranges, rollups, the
budget book, and the writer's queue against a database that fails."""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from tollway.core.config import loads
from tollway.core.errors import GatewayError
from tollway.core.ledger.budgets import BudgetBook
from tollway.core.ledger.periods import DAY, HOUR, parse_instant, period_end, period_start, segments
from tollway.core.ledger.record import FIELDS, UsageRecord
from tollway.core.ledger.report import answer, merge, spend_query
from tollway.core.ledger.rollup import SUMS, daily, hourly
from tollway.core.ledger.tags import parse_tags
from tollway.gateway.store import StoreError
from tollway.gateway.store.ledger import Ledger, LedgerCounters


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_record_has_the_contract_fields_in_order():
    assert FIELDS == ("ts", "request_id", "key", "key_id", "team", "model", "provider", "upstream_model", "api",
                      "status", "error", "stream", "input_tokens", "cached_input_tokens", "cache_write_tokens",
                      "output_tokens", "reasoning_tokens", "cost_usd", "latency_ms", "ttft_ms", "attempts",
                      "cache_hit", "tags", "trace_id", "guardrails")


@pytest.mark.parametrize("header, tags", [
    ("feature:search", ("feature:search",)),
    (" a , b=c ,a,, x.y-z_1 ", ("a", "b=c", "x.y-z_1")),
    ("", ()),
])
def test_tags_parse(header, tags):
    assert parse_tags(header) == tags


@pytest.mark.parametrize("header", ["has space", "quote\"", "ünï", ",".join(f"t{i}" for i in range(9)), "x" * 65, "a/b"])
def test_bad_tags_are_a_400_naming_the_header(header):
    with pytest.raises(GatewayError) as caught:
        parse_tags(header)
    assert caught.value.status == 400 and "x-tollway-tags" in caught.value.message
    assert caught.value.param == "x-tollway-tags"


def test_calendar_periods_are_utc_and_weeks_start_on_monday():
    now = ts("2026-11-30T22:40:00")  # a Monday
    assert period_start(now, "day") == ts("2026-11-30T00:00:00")
    assert period_end(now, "day") == ts("2026-12-01T00:00:00")
    assert period_start(ts("2026-12-06T23:59:59"), "week") == ts("2026-11-30T00:00:00")  # Sunday: same week
    assert period_end(now, "week") == ts("2026-12-07T00:00:00")
    assert period_start(now, "month") == ts("2026-11-01T00:00:00")
    assert period_end(ts("2026-12-31T23:00:00"), "month") == ts("2027-01-01T00:00:00")


def test_report_bounds_parse_and_refuse_garbage():
    now = ts("2026-11-30T12:00:00")
    assert parse_instant("7d", now) == now - 7 * DAY
    assert parse_instant("12h", now) == now - 12 * HOUR
    assert parse_instant("2026-11-01T00:00:00Z", now) == ts("2026-11-01T00:00:00")
    assert parse_instant("2026-11-01", now) == ts("2026-11-01T00:00:00")
    with pytest.raises(ValueError, match="not a time"):
        parse_instant("last tuesday", now)
    assert parse_instant("999999d", now) == 0.0, "before the epoch: the ledger holds nothing earlier"
    assert parse_instant("0001-01-01T00:00:00Z", now) == 0.0
    assert answer(spend_query("team", "999999d", None, now), {})["since"] == "1970-01-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="group_by"):
        spend_query("team,colour", None, None, now)


@pytest.mark.parametrize("since, until", [
    ("2026-10-31T22:43:26", "2026-11-30T22:43:26"),  # raw, hourly, daily, hourly, raw
    ("2026-11-30T10:15:00", "2026-11-30T10:45:00"),  # inside one hour: raw only
    ("2026-11-30T00:00:00", "2026-12-02T00:00:00"),  # whole days
    ("2026-11-30T10:15:00", "2026-11-30T13:00:00"),  # raw edge, then hours
])
def test_segments_tile_the_range_exactly_with_whole_hours_and_days(since, until):
    lo, hi = ts(since), ts(until)
    parts = segments(lo, hi)
    assert parts[0][1] == lo and parts[-1][2] == hi
    for (_, _, end), (_, start, _) in zip(parts, parts[1:]):
        assert end == start, "no gap, no overlap"
    for table, a, b in parts:
        if table == "hourly":
            assert a % HOUR == 0 and b % HOUR == 0
        if table == "daily":
            assert a % DAY == 0 and b % DAY == 0


def _record(i: int, **over) -> UsageRecord:
    base = dict(ts=ts("2026-11-30T10:00:00") + i * 600, request_id=f"r{i}", key=f"k{i % 2}", key_id=f"config:k{i % 2}",
                team="t" if i % 3 else None, model="m", provider="p", upstream_model="u", api="chat",
                status=500 if i % 5 == 0 else 200, error=None, stream=bool(i % 2), input_tokens=10 + i,
                cached_input_tokens=i % 3, output_tokens=5, reasoning_tokens=1, cost_usd=None if i % 7 == 0 else 0.01 * i)
    base.update(over)
    return UsageRecord(**base)


def test_rollups_add_up_to_the_records():
    records = [_record(i) for i in range(40)]
    records += [_record(40 + i, error="upstream_error", status=200) for i in range(3)]  # a stream cut after its 200
    for rolled in (hourly(records), daily(records)):
        totals = [sum(s[i] for s in rolled.values()) for i in range(len(SUMS))]
        sums = dict(zip(SUMS, totals))
        assert sums["requests"] == 43
        assert sums["errors"] == sum(1 for r in records if r.status >= 400 or r.error is not None)
        assert sums["unpriced_requests"] == sum(1 for r in records if r.cost_usd is None)
        assert sums["input_tokens"] == sum(r.input_tokens for r in records)
        assert sums["cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in records))
    assert len(hourly(records)) > len(daily(records))


def test_an_owner_absent_or_empty_is_one_rollup_row_that_counts_both():
    at = "2026-11-30T10:00:00"  # the same hour: one row in each table, holding both records
    records = [_record(0, ts=ts(at), team=None, provider=None), _record(1, ts=ts(at), key="k0", key_id="config:k0",
                                                                         team="", provider="")]
    for rolled in (hourly(records), daily(records)):
        assert len(rolled) == 1
        assert dict(zip(SUMS, next(iter(rolled.values()))))["requests"] == 2


def test_the_answer_totals_and_orders_groups_by_cost():
    query = spend_query("team", "1d", None, ts("2026-11-30T12:00:00"))
    groups = merge([(("a",), [1, 0, 0, 10, 0, 0, 5, 0, 0.5]), (("b",), [1, 1, 0, 1, 0, 0, 1, 0, 2.0]),
                    (("a",), [2, 0, 1, 20, 0, 0, 5, 0, 0.25])])
    report = answer(query, groups)
    assert [d["team"] for d in report["data"]] == ["b", "a"]
    assert report["data"][1]["requests"] == 3 and report["data"][1]["cost_usd"] == 0.75
    assert report["total"]["requests"] == 4 and report["total"]["cost_usd"] == 2.75
    assert report["object"] == "spend" and report["group_by"] == ["team"]


CONFIG = """
keys:
  - {name: k, key_hash: "sha256:%s", team: t, budget: {usd: 1.0, period: day}}
  - {name: free, key_hash: "sha256:%s"}
teams:
  - {name: t, budget: {usd: 1.5, period: month}}
""" % ("a" * 64, "b" * 64)


def test_a_budget_refuses_once_spent_and_resets_at_the_period_boundary():
    config = loads(CONFIG)
    now = ts("2026-11-15T22:00:00")
    book = BudgetBook.of(config, now)
    assert book.refusal("k", "t", now) is None
    book.charge("k", "t", 0.6, now)
    assert book.refusal("k", "t", now) is None, "0.6 of 1.0 spent: still allowed"
    book.charge("k", "t", 0.6, now)  # the request that exhausts it was allowed; the next is refused
    refused = book.refusal("k", "t", now)
    assert refused is not None and refused.status == 429 and refused.code == "insufficient_quota"
    assert "2026-11-16T00:00:00.000Z" in refused.message and "key 'k'" in refused.message
    assert ("x-tollway-budget-resets-at", "2026-11-16T00:00:00.000Z") in refused.headers
    next_day = ts("2026-11-16T00:00:01")
    assert book.refusal("k", "t", next_day) is None, "the key's day reset (the team has 0.3 left)"
    book.charge("k", "t", 0.4, next_day)
    refused = book.refusal("k", "t", next_day)
    assert refused is not None and "team 't'" in refused.message and "2026-12-01T00:00:00.000Z" in refused.message
    status = {(s["owner"], s.get("key") or s.get("team")): s for s in book.status(next_day)}
    assert status[("key", "k")]["spent_usd"] == pytest.approx(0.4)
    assert status[("team", "t")]["spent_usd"] == pytest.approx(1.6) and status[("team", "t")]["remaining_usd"] == 0
    assert book.refusal("k", "t", ts("2026-12-01T00:00:00")) is None, "a new month: both reset"
    assert book.refusal("free", None, now) is None, "no budget: never refused"


class FlakyStore:
    backend = "flaky"

    def __init__(self) -> None:
        self.up = False
        self.written: list[UsageRecord] = []

    async def open(self) -> None:
        return None

    async def write(self, records):
        if not self.up:
            raise StoreError("connection refused")
        self.written.extend(records)

    async def prune(self, before: float) -> int:
        return 0

    async def aclose(self) -> None:
        return None


async def test_records_wait_while_the_database_is_down_and_overflow_is_counted(caplog):
    from prometheus_client import CollectorRegistry
    config = loads("store: {backend: sqlite}\nledger: {buffer_records: 50, batch_records: 10, flush_interval: 0.01}").ledger
    store, counters = FlakyStore(), LedgerCounters(CollectorRegistry())
    ledger = Ledger(store, config, counters)  # type: ignore[arg-type]
    ledger.start(asyncio.get_running_loop())
    with caplog.at_level(logging.WARNING, logger="tollway"):
        for i in range(80):
            ledger.submit(_record(i))
        await asyncio.sleep(0.1)
    assert ledger.queued == 50 and counters.dropped._value.get() == 30
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1, "logged once per incident, not once per record"
    store.up = True
    for _ in range(200):
        if len(store.written) == 50:
            break
        await asyncio.sleep(0.02)
    assert [r.request_id for r in store.written] == [f"r{i}" for i in range(50)], "in order, none lost"
    assert counters.written._value.get() == 50
    await ledger.close(1.0)


def test_check_warns_that_budgets_without_a_ledger_forget_at_restart():
    from tollway.core.config import check
    checked = check(CONFIG)
    assert not checked.errors
    warned = [str(w) for w in checked.warnings]
    assert len(warned) == 2 and all("starts from zero at each restart" in w for w in warned)
    assert "keys.k.budget" in warned[0] and "teams.t.budget" in warned[1]
    assert not check(CONFIG + "store: {backend: sqlite}\n").warnings


class PickyStore(FlakyStore):
    """A database that refuses one record for its data (as SQLite refuses an int past 2**63)."""

    async def write(self, records):
        if any(r.input_tokens > 2**63 for r in records):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        await super().write(records)


async def test_a_record_the_database_refuses_is_dropped_and_counted_not_the_batch(caplog):
    from prometheus_client import CollectorRegistry
    config = loads("store: {backend: sqlite}\nledger: {batch_records: 10, flush_interval: 0.01}").ledger
    store, counters = PickyStore(), LedgerCounters(CollectorRegistry())
    store.up = True
    ledger = Ledger(store, config, counters)  # type: ignore[arg-type]
    ledger.start(asyncio.get_running_loop())
    for i in range(10):
        ledger.submit(_record(i, input_tokens=2**64 - 1) if i == 4 else _record(i))
    for _ in range(100):
        if not ledger.queued:
            break
        await asyncio.sleep(0.02)
    assert [r.request_id for r in store.written] == [f"r{i}" for i in range(10) if i != 4]
    assert counters.dropped._value.get() == 1 and counters.written._value.get() == 9
    ledger.submit(_record(20))  # and the writer goes on
    for _ in range(100):
        if len(store.written) == 10:
            break
        await asyncio.sleep(0.02)
    assert store.written[-1].request_id == "r20"
    await ledger.close(1.0)


async def test_the_retry_pause_holds_while_requests_keep_coming():
    from prometheus_client import CollectorRegistry

    class Counting(FlakyStore):
        attempts = 0

        async def write(self, records):
            Counting.attempts += 1
            raise StoreError("down")

    config = loads("store: {backend: sqlite}\nledger: {batch_records: 2, flush_interval: 0.01}").ledger
    ledger = Ledger(Counting(), config, LedgerCounters(CollectorRegistry()))  # type: ignore[arg-type]
    ledger.start(asyncio.get_running_loop())
    for _ in range(100):  # 100 requests over 0.5 s, with the database down
        ledger.submit(_record(1))
        await asyncio.sleep(0.005)
    assert Counting.attempts <= 4, f"{Counting.attempts} attempts: the pause (0.25 s, doubling) did not hold"
    await ledger.close(0.1)


async def test_close_keeps_its_deadline_behind_a_slow_write():
    from prometheus_client import CollectorRegistry

    class Slow(FlakyStore):
        async def write(self, records):
            await asyncio.sleep(0.3)
            self.written.extend(records)

    config = loads("store: {backend: sqlite}\nledger: {batch_records: 5, flush_interval: 0.01}").ledger
    store, counters = Slow(), LedgerCounters(CollectorRegistry())
    ledger = Ledger(store, config, counters)  # type: ignore[arg-type]
    ledger.opened = True
    ledger.start(asyncio.get_running_loop())
    for i in range(25):
        ledger.submit(_record(i))
    await asyncio.sleep(0.05)  # a write is under way
    started = asyncio.get_running_loop().time()
    await ledger.close(0.5)
    assert asyncio.get_running_loop().time() - started < 0.9
    # the write that was in flight when the deadline came ended within close: counted once
    assert counters.written._value.get() == len(store.written) and len(store.written) % 5 == 0
    assert len(store.written) + counters.dropped._value.get() == 25, "every record written or counted as dropped"


class StuckStore(FlakyStore):
    """A write that waits (on a lock another session holds) until the store is closed under it,
    then fails, as PostgreSQL's does when the pool is closed; or, with `release`, until the test
    lets it succeed."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.closed = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, records):
        self.writing.set()
        closed = asyncio.ensure_future(self.closed.wait())
        released = asyncio.ensure_future(self.release.wait())
        await asyncio.wait([closed, released], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel(), released.cancel()
        if not self.release.is_set():
            raise StoreError("cannot call Transaction.__aexit__(): the underlying connection is closed")
        self.written.extend(records)

    async def aclose(self) -> None:
        self.closed.set()


async def _stuck_at_shutdown(store: StuckStore, caplog) -> tuple[Ledger, LedgerCounters]:
    from prometheus_client import CollectorRegistry
    config = loads("store: {backend: sqlite}\nledger: {batch_records: 5, flush_interval: 0.01}").ledger
    counters = LedgerCounters(CollectorRegistry())
    ledger = Ledger(store, config, counters)  # type: ignore[arg-type]
    ledger.opened = True
    ledger.start(asyncio.get_running_loop())
    for i in range(12):
        ledger.submit(_record(i))
    await store.writing.wait()
    with caplog.at_level(logging.INFO, logger="tollway"):
        await ledger.close(0.1)
    return ledger, counters


async def test_the_batch_being_written_at_the_deadline_is_counted_as_dropped_when_its_write_fails(caplog):
    """Closing the store ends the write under way; its batch is dropped and counted, never put
    back in a queue nobody will write again."""
    store = StuckStore()
    ledger, counters = await _stuck_at_shutdown(store, caplog)
    assert counters.dropped._value.get() == 12 and counters.written._value.get() == 0
    assert ledger.queued == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "7 usage records could not be written before shutdown" in said  # the queue, at the deadline
    assert "5 usage records being written at shutdown could not be written" in said  # the batch under way
    assert "retried" not in said


async def test_a_write_that_outlives_close_is_counted_once(caplog):
    """A write still under way a moment after the store was closed is counted as dropped, and
    its late end counts nothing more: a record is never both written and dropped."""
    store = StuckStore()
    store.aclose = lambda: asyncio.sleep(0)  # type: ignore[method-assign]  # the write goes on regardless
    ledger, counters = await _stuck_at_shutdown(store, caplog)
    assert counters.dropped._value.get() == 12 and ledger.queued == 0
    store.release.set()
    for _ in range(100):
        if store.written:
            break
        await asyncio.sleep(0.01)
    assert len(store.written) == 5 and counters.written._value.get() == 0


class _RecordingRows:
    """A row writer that notes how it was asked to insert (its transaction is its own)."""

    def __init__(self, inner: object) -> None:
        self.inner, self.calls = inner, []

    def execute(self, sql: str) -> None:
        self.inner.execute(sql)  # type: ignore[attr-defined]

    def insert(self, head: str, row: str, tail: str, rows: list[tuple[object, ...]], encode: object = None,
               yield_every: int = 0) -> None:
        self.calls.append((head.split(" (")[0], len(rows), yield_every))
        self.inner.insert(head, row, tail, rows, encode, yield_every)  # type: ignore[attr-defined]


def test_a_sqlite_batch_hands_the_core_over_between_slices_and_writes_every_row(tmp_path):
    """A batch's CPU is split into slices with the core handed over between them (a request
    arriving meanwhile waited for the whole burst: bench/README.md, the c=1 p99 with the
    SQLite ledger), inside the row writer's one call; the rows and rollups are the whole
    batch's, in one transaction."""
    import sqlite3

    from tollway.gateway.store import sqlite as store

    db = sqlite3.connect(str(tmp_path / "ledger.db"), isolation_level=None)
    store._migrate(db)
    records = [_record(i, request_id=f"s{i}") for i in range(200)]
    rows = _RecordingRows(store.RowWriter(str(tmp_path / "ledger.db"), 5000))
    store._write(rows, records)  # type: ignore[arg-type]
    rows.inner.close()
    assert rows.calls[0] == ("INSERT INTO usage_records", 200, 32)
    assert [c[0] for c in rows.calls[1:]] == ["INSERT INTO usage_hourly", "INSERT INTO usage_daily"]
    assert db.execute("SELECT count(*) FROM usage_records").fetchone()[0] == 200
    hours = db.execute("SELECT sum(requests) FROM usage_hourly").fetchone()[0]
    assert hours == 200


def test_csv_cells_that_start_like_a_formula_are_text():
    """`tollway usage --format csv`: OWASP's prefixes (= + - @ tab CR) get a leading ', numbers
    (a negative one too) and other text are as they are."""
    import csv
    import io

    from tollway.core.ledger.rollup import SUMS
    from tollway.gateway.store.usage_command import _csv
    names = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "gpt-4o", "", None]
    report = {"group_by": ["model"], "data": [{"model": n, **{s: -1.5 for s in SUMS}} for n in names]}
    out = io.StringIO()
    _csv(report, out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert [r[0] for r in rows[1:]] == ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "gpt-4o", "", ""]
    assert all(r[1:] == ["-1.5"] * len(SUMS) for r in rows[1:])

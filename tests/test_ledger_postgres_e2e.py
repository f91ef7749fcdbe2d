"""The ledger on PostgreSQL through real gateways: two gateways share one database and each
one's reports see both; a database that stops mid-run (an instance of the test's own) never
fails a request, its records arrive when it is back, and overflow is counted."""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import ADMIN_KEY, OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.pg_databases import fresh_database, need_postgres
from tests.pg_instance import PgInstance, pg_bin


def _config(upstream: str, url: str, ledger: str = "{flush_interval: 0.05}") -> str:
    return f"""
providers: [{{name: up, schema: openai, base_url: {upstream}, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o-mini, targets: [{{provider: up}}]}}]
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search}}
  - {{name: bob, key_hash: "{key_hash(OTHER_KEY)}", team: ads}}
teams: [{{name: search}}, {{name: ads}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
store: {{backend: postgres, url: "{url}"}}
ledger: {ledger}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


def _chat(gw: GatewayProcess, key: str) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert raw.http_response.status_code == 200
    return raw.headers["x-request-id"]


def _admin(gw: GatewayProcess, path: str) -> dict:
    req = urllib.request.Request(gw.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def _until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_two_gateways_on_one_database_each_report_sees_both(upstream, database):
    a, b = GatewayProcess(_config(upstream.url, database)), GatewayProcess(_config(upstream.url, database))
    try:
        sent = {_chat(a, TEST_KEY) for _ in range(3)} | {_chat(b, OTHER_KEY) for _ in range(2)}
        for gw in (a, b):
            await _until(lambda gw=gw: sent <= {r["request_id"] for r in _admin(gw, "/admin/requests")["data"]})
            spend = {d["key"]: d for d in _admin(gw, "/admin/spend?group_by=key&since=1h")["data"]}
            assert spend["alice"]["requests"] == 3 and spend["bob"]["requests"] == 2
            assert spend["alice"]["cost_usd"] > 0
    finally:
        a.stop()
        b.stop()


async def test_a_database_that_stops_mid_run_fails_no_request_and_its_records_arrive_after(upstream):
    need_postgres()
    binaries = pg_bin()
    if binaries is None:
        pytest.skip("the PostgreSQL binaries (initdb, pg_ctl) are not installed")
    with PgInstance(binaries) as pg:
        gw = GatewayProcess(_config(upstream.url, pg.url, "{flush_interval: 0.05, buffer_records: 8, batch_records: 4}"))
        try:
            before = [_chat(gw, TEST_KEY) for _ in range(3)]
            await _until(lambda: set(before) <= {r["request_id"] for r in _admin(gw, "/admin/requests")["data"]})
            pg.stop()
            started = time.monotonic()
            during = [_chat(gw, TEST_KEY) for _ in range(12)]  # every one answered, none slowed by the dead database
            assert time.monotonic() - started < 10
            metrics = urllib.request.urlopen(gw.url + "/metrics").read().decode()
            dropped = float(re.search(r"^tollway_ledger_dropped_total (\S+)", metrics, re.M).group(1))
            assert dropped >= 4, "12 records for a buffer of 8: the overflow is counted"
            assert "tollway_ledger_queued 8.0" in metrics
            with pytest.raises(urllib.error.HTTPError) as unavailable:
                _admin(gw, "/admin/spend")
            assert unavailable.value.code == 503
            pg.start()
            await _until(lambda: len(set(during) & {r["request_id"] for r in _admin(gw, "/admin/requests")["data"]}) == 8,
                         timeout=30)
            kept = set(during) & {r["request_id"] for r in _admin(gw, "/admin/requests?limit=100")["data"]}
            assert kept == set(during[:8]), "the first 8 waited and were written; the rest were the overflow"
        finally:
            gw.stop()


async def test_a_record_postgresql_refuses_for_its_data_is_dropped_and_the_rest_written(database):
    """A data error (SQLSTATE class 22: here the hour's cost passing float8's range in the rollup
    upsert) is not the database being down: the batch is written record by record, the one it
    refuses is dropped and counted, and the writer goes on; never retried forever while every
    later record waits."""
    from prometheus_client import CollectorRegistry

    from tollway.core.config import loads
    from tollway.core.ledger.record import UsageRecord
    from tollway.gateway.store.ledger import Ledger, LedgerCounters
    from tollway.gateway.store.postgres import PostgresStore

    now = time.time()

    def record(i: int, cost: float) -> UsageRecord:
        return UsageRecord(now, f"r{i}", "alice", None, "t", "m", "up", "m", "chat", 200, None, False, cost_usd=cost)

    config = loads("store: {backend: sqlite}\nledger: {batch_records: 10, flush_interval: 0.01}").ledger
    store, counters = PostgresStore(database), LedgerCounters(CollectorRegistry())
    ledger = Ledger(store, config, counters)
    await ledger.open()
    ledger.start(asyncio.get_running_loop())
    try:
        ledger.submit(record(0, 0.95e308))
        await _until(lambda: counters.written._value.get() == 1)
        for i, cost in enumerate([0.01, 0.95e308, 0.02], start=1):  # r2 takes alice's hour past float8
            ledger.submit(record(i, cost))
        await _until(lambda: ledger.queued == 0, timeout=10)
        assert counters.written._value.get() == 3 and counters.dropped._value.get() == 1
        ledger.submit(record(4, 0.03))  # and the writer goes on
        await _until(lambda: counters.written._value.get() == 4, timeout=10)
    finally:
        await ledger.close(1.0)
    import asyncpg
    conn = await asyncpg.connect(database)
    try:
        ids = {row["request_id"] for row in await conn.fetch("SELECT request_id FROM usage_records")}
    finally:
        await conn.close()
    assert ids == {"r0", "r1", "r3", "r4"}

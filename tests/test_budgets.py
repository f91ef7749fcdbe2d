"""Calendar budgets at run time: the gate and the charge in a gateway (with an injected clock),
and the spend shared through a real Redis between replicas."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import redis

from tests.test_pipeline import Proto, Scope
from tollway.core.config import loads
from tollway.core.ledger.periods import period_start
from tollway.core.ledger.report import SpendQuery, merge
from tollway.core.security.keys import hash_key
from tollway.gateway.app import Gateway
from tollway.gateway.exchange import Exchange
from tollway.gateway.store import budget_share
from tollway.gateway.store.budgets import BudgetKeeper

KEY = "sk-pipeline-test"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _config(extra: str = "") -> str:
    return f"""
providers: [{{name: up, schema: fake, fake_chunks: 4}}]
models: [{{name: m, targets: [{{provider: up, model: m}}], price: {{input: 1000000, output: 1000000}}}}]
keys: [{{name: k, key_hash: "{hash_key(KEY)}", models: ["*"], team: t, budget: {{usd: 5, period: week}}}}]
teams: [{{name: t}}]
{extra}"""


async def _ask(gw: Gateway, stream: bool = False) -> Proto:
    body = msgspec.json.encode({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    proto = Proto(body)
    await gw.__rsgi__(Scope(body), proto)
    return proto


async def test_the_gateway_refuses_a_spent_key_until_the_week_turns():
    gw = Gateway(loads(_config()))
    gw.start()
    clock = [ts("2026-11-29T23:00:00")]  # a Sunday: the week ends in an hour
    gw.books.budgets.clock = lambda: clock[0]
    try:
        first = await _ask(gw)  # each request costs $1 per token: several dollars
        assert first.status == 200
        while (answer := await _ask(gw)).status == 200:
            pass
        assert answer.status == 429 and b"insufficient_quota" in answer.answer
        assert b"2026-11-30T00:00:00.000Z" in answer.answer, "says when the week resets"
        clock[0] = ts("2026-11-30T00:00:01")  # Monday: a new week
        assert (await _ask(gw)).status == 200
    finally:
        await gw.upstream.aclose()


async def test_a_reload_keeps_what_was_spent():
    gw = Gateway(loads(_config()))
    gw.start()
    try:
        while (await _ask(gw)).status == 200:
            pass
        gw.reload(loads(_config("server: {max_body_bytes: 100000}")))
        assert (await _ask(gw)).status == 429, "the reload did not forget the spend"
        gw.reload(loads(_config().replace("usd: 5", "usd: 5000")))
        assert (await _ask(gw)).status == 200, "a raised budget applies at once"
    finally:
        await gw.upstream.aclose()
        await gw.books.budgets.aclose()


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_replicas_share_the_spend_through_redis():
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}"))
    now = ts("2026-11-30T12:00:00")
    one, two = BudgetKeeper(config, lambda: now), BudgetKeeper(config, lambda: now)
    assert one.share is not None and two.share is not None
    try:
        await one.share.sync(one.book, now)
        await two.share.sync(two.book, now)
        one.book.charge("k", "t", 3.0, now)
        one.share.add([(("key", "k"), one.book.accounts[("key", "k")])], 3.0)
        two.book.charge("k", "t", 2.5, now)
        two.share.add([(("key", "k"), two.book.accounts[("key", "k")])], 2.5)
        await one.share.sync(one.book, now)
        await two.share.sync(two.book, now)
        assert two.book.accounts[("key", "k")].spent == pytest.approx(5.5), "each sees both replicas' spend"
        await one.share.sync(one.book, now)
        assert one.book.accounts[("key", "k")].spent == pytest.approx(5.5)
        assert one.book.refusal("k", "t", now) is not None and two.book.refusal("k", "t", now) is not None
    finally:
        client = redis.Redis()
        for name in client.scan_iter(f"{{{prefix}}}:*"):
            client.delete(name)
        await one.share.client.aclose()
        await two.share.client.aclose()


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_replica_counts_alone_while_redis_is_down_and_catches_up_after():
    config = loads(_config("rate_limits: {backend: redis, redis_url: 'redis://127.0.0.1:9/0'}"))
    now = ts("2026-11-30T12:00:00")
    keeper = BudgetKeeper(config, lambda: now)
    assert keeper.share is not None
    keeper.book.charge("k", "t", 1.0, now)
    keeper.share.add([(("key", "k"), keeper.book.accounts[("key", "k")])], 1.0)
    await asyncio.wait_for(keeper.share.sync(keeper.book, now), 5)  # fails fast, keeps the charge
    assert keeper.book.accounts[("key", "k")].spent == 1.0
    assert sum(keeper.share.pending.values()) == 1.0, "kept for the next try"
    await keeper.share.client.aclose()


def test_several_workers_with_budgets_in_memory_are_refused():
    from tollway.gateway.limits.limiter import per_worker_problem
    problem = per_worker_problem(loads(_config()), 2)
    assert problem is not None and "budgets" in problem and "backend: redis" in problem
    assert per_worker_problem(loads(_config()), 1) is None
    assert per_worker_problem(loads(_config("rate_limits: {backend: redis}")), 2) is None


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_redis_sharing_neither_double_counts_a_charge_made_before_the_first_sync_nor_forgets_lost_keys():
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}"))
    now = ts("2026-11-30T12:00:00")
    keeper = BudgetKeeper(config, lambda: now)
    account = keeper.book.accounts[("key", "k")]
    client = redis.Redis()
    try:
        keeper.book.charge("k", "t", 1.0, now)  # charged before Redis ever heard of this period
        keeper.share.add([(("key", "k"), account)], 1.0)
        await keeper.share.sync(keeper.book, now)
        assert account.spent == pytest.approx(1.0), "seeded without the pending charge, then added once"
        for name in client.scan_iter(f"{{{prefix}}}:*"):  # Redis restarts without persistence
            client.delete(name)
        keeper.book.charge("k", "t", 0.5, now)
        keeper.share.add([(("key", "k"), account)], 0.5)
        await keeper.share.sync(keeper.book, now)
        assert account.spent == pytest.approx(1.5), "the last known total came back, plus the new charge"
    finally:
        for name in client.scan_iter(f"{{{prefix}}}:*"):
            client.delete(name)
        await keeper.share.client.aclose()


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
async def test_an_owner_awaiting_the_ledger_still_shares_a_counter_another_replica_seeded():
    """The ledger's database is down at this replica's start: it must not seed the counter,
    but one that a replica which read the ledger seeded is the owner's total, so this replica
    reads it and adds its charges to it rather than counting alone."""
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}"))
    now = ts("2026-11-30T12:00:00")
    keeper = BudgetKeeper(config, lambda: now)
    account = keeper.book.accounts[("key", "k")]
    keeper.await_ledger()
    client = redis.Redis()
    try:
        name = keeper.share.name(("key", "k"), account)
        await keeper.share.sync(keeper.book, now)
        assert client.get(name) is None, "nothing seeded before the ledger is read"
        client.set(name, "50.0")  # other replicas' total, seeded from the ledger
        keeper.book.charge("k", "t", 3.0, now)
        keeper.share.add([(("key", "k"), account)], 3.0)
        for _ in range(2):
            await keeper.share.sync(keeper.book, now)
        assert account.spent == pytest.approx(53.0) and float(client.get(name)) == pytest.approx(53.0)
        assert not account.awaiting_ledger  # (a late ledger read then leaves it be: Redis's total holds it)
    finally:
        for key in client.scan_iter(f"{{{prefix}}}:*"):
            client.delete(key)
        await keeper.share.client.aclose()


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_charge_whose_reply_came_after_the_timeout_is_added_once(slow_redis):
    """Redis added the charges, its reply came after the socket timeout: the replica cannot
    tell, so it sends them again, and Redis must not add them twice."""
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}, redis_url: '{slow_redis.url}'}}"))
    now = ts("2026-11-30T12:00:00")
    keeper = BudgetKeeper(config, lambda: now)
    account = keeper.book.accounts[("key", "k")]
    name = keeper.share.name(("key", "k"), account)
    client = redis.Redis()
    try:
        keeper.add("k", "t", 1.0)
        await keeper.share.sync(keeper.book, now)
        keeper.add("k", "t", 1.0)
        slow_redis.delay = 1.0  # past the 0.5 s socket timeout
        await keeper.share.sync(keeper.book, now)
        assert float(client.get(name)) == pytest.approx(2.0), "Redis added it"
        assert sum(keeper.share.pending.values()) == pytest.approx(1.0), "the replica cannot know: kept"
        await asyncio.sleep(1.2)  # (the late reply drains)
        slow_redis.delay = 0.0
        keeper.add("k", "t", 0.5)
        for _ in range(2):
            await keeper.share.sync(keeper.book, now)
        assert float(client.get(name)) == pytest.approx(2.5), "sent again, added once"
        assert account.spent == pytest.approx(2.5) and not keeper.share.pending
    finally:
        for key in client.scan_iter(f"{{{prefix}}}:*"):
            client.delete(key)
        await keeper.share.client.aclose()


async def test_a_budget_added_by_a_reload_counts_what_the_ledger_already_holds(tmp_path):
    store = f"store: {{backend: sqlite, path: '{tmp_path / 'ledger.db'}'}}\nledger: {{flush_interval: 0.01}}\n"
    unbudgeted = _config(store).replace(", budget: {usd: 5, period: week}", "")
    gw = Gateway(loads(unbudgeted))
    gw.start()
    await gw.books.start(asyncio.get_running_loop())
    try:
        for _ in range(3):
            assert (await _ask(gw)).status == 200  # dollars each, no budget yet
        while gw.books.ledger.queued:
            await asyncio.sleep(0.01)
        gw.reload(loads(unbudgeted.replace("teams: [{name: t}]", "teams: [{name: t, budget: {usd: 1, period: month}}]")))
        while gw.background:
            await asyncio.sleep(0.01)
        assert (await _ask(gw)).status == 429, "the team's spend this month came from the ledger"
    finally:
        await gw.books.close(1.0)
        await gw.upstream.aclose()


async def test_a_budget_added_by_a_reload_counts_what_the_ledger_has_still_queued(tmp_path):
    """The records of requests just answered wait in the ledger's queue (`flush_interval`): a
    budget added then read the database alone, and the key went on spending past it."""
    store = f"store: {{backend: sqlite, path: '{tmp_path / 'ledger.db'}'}}\nledger: {{flush_interval: 30}}\n"
    unbudgeted = _config(store).replace(", budget: {usd: 5, period: week}", "")
    gw = Gateway(loads(unbudgeted))
    gw.start()
    await gw.books.start(asyncio.get_running_loop())
    try:
        for _ in range(3):
            assert (await _ask(gw)).status == 200  # dollars each, no budget yet
        assert gw.books.ledger.queued == 3, "the records are still queued, not written"
        gw.reload(loads(unbudgeted.replace("teams: [{name: t}]", "teams: [{name: t, budget: {usd: 20, period: week}}]")))
        while gw.background:
            await asyncio.sleep(0.01)
        assert gw.books.budgets.book.accounts[("team", "t")].spent == pytest.approx(3 * 9.0)
        answer = await _ask(gw)
        assert answer.status == 429 and b"insufficient_quota" in answer.answer, "the queued spend counts"
    finally:
        await gw.books.close(1.0)
        await gw.upstream.aclose()


async def test_a_budget_added_while_a_batch_is_being_written_counts_it_once(tmp_path, monkeypatch):
    """A batch taken from the queue and not yet in the database is in neither: the read waits
    for its write, then finds it there (and not in the queue as well)."""
    unbudgeted = _config(_store(tmp_path)).replace(", budget: {usd: 5, period: week}", "")
    gw = Gateway(loads(unbudgeted))
    gw.start()
    await gw.books.start(asyncio.get_running_loop())
    store = gw.books.ledger.store
    writing, release, write = asyncio.Event(), asyncio.Event(), store.write

    async def slow_write(records):
        writing.set()
        await release.wait()
        await write(records)

    monkeypatch.setattr(store, "write", slow_write)
    try:
        for _ in range(3):
            assert (await _ask(gw)).status == 200  # dollars each, no budget yet
        await asyncio.wait_for(writing.wait(), 5.0)
        assert gw.books.ledger.queued == 3 and not list(gw.books.ledger.unwritten()), "all three being written"
        gw.reload(loads(unbudgeted.replace("teams: [{name: t}]", "teams: [{name: t, budget: {usd: 20, period: week}}]")))
        await asyncio.sleep(0.05)  # the reload's read of the ledger is under way
        release.set()
        while gw.background:
            await asyncio.sleep(0.01)
        assert gw.books.budgets.book.accounts[("team", "t")].spent == pytest.approx(3 * 9.0)
        assert (await _ask(gw)).status == 429
    finally:
        release.set()
        await gw.books.close(1.0)
        await gw.upstream.aclose()


async def test_a_request_in_flight_across_a_reload_is_charged_to_the_budget_in_force():
    gw = Gateway(loads(_config()))
    gw.start()
    try:
        old_charge = gw.books.budgets.charge  # what a request admitted before the reload holds
        gw.reload(loads(_config("server: {max_body_bytes: 100000}")))
        ex = Exchange("req_inflight", "chat")
        ex.key_name, ex.team, ex.cost_usd = "k", "t", 4.0
        old_charge(ex)
        assert gw.books.budgets.book.accounts[("key", "k")].spent == pytest.approx(4.0)
    finally:
        await gw.upstream.aclose()


def _store(tmp_path: Path) -> str:
    return f"store: {{backend: sqlite, path: '{tmp_path / 'ledger.db'}'}}\nledger: {{flush_interval: 0.01}}\n"


async def _ledger_spend(gw: Gateway, kind: str, name: str) -> float:
    """What the ledger holds for the owner this week, once every queued record is written."""
    assert gw.books.ledger is not None
    deadline = time.monotonic() + 20.0
    while gw.books.ledger.queued:
        assert time.monotonic() < deadline, f"the ledger kept {gw.books.ledger.queued} records queued for 20 s"
        await asyncio.sleep(0.01)
    now = time.time()
    spent = merge(await gw.books.ledger.store.spend(SpendQuery((kind,), period_start(now, "week"), now + 1)))
    return spent[(name,)][-1]


@pytest.fixture
def fast_sync(monkeypatch: pytest.MonkeyPatch) -> float:
    """The shares sync every 20 ms, not every second: the tests wait for their syncs."""
    monkeypatch.setattr(budget_share, "SYNC_SECONDS", 0.02)
    return 0.02


async def _shared_spend(gw: Gateway, kind: str, name: str, expect: float) -> tuple[float, float]:
    """The owner's spend as this replica sees it and as Redis holds it, once the running share's
    syncs made both `expect`, or as they are after 2 s. (Never a sync of its own: one beside the
    share's could seed a new counter twice.)"""
    keeper = gw.books.budgets
    assert keeper.share is not None
    account = keeper.book.accounts[(kind, name)]
    deadline = time.monotonic() + 2.0
    while True:
        value = await keeper.share.client.get(keeper.share.name((kind, name), account))
        seen = (account.spent, float(value or 0.0))
        if seen == (pytest.approx(expect), pytest.approx(expect)) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.01)


def _drop_keys(prefix: str) -> None:
    client = redis.Redis()
    for name in client.scan_iter(f"{{{prefix}}}:*"):
        client.delete(name)


@contextlib.asynccontextmanager
async def _serving(text: str, prefix: str) -> AsyncIterator[Gateway]:
    """A gateway of `text` with its books running; closed, and its Redis keys dropped, after."""
    gw = Gateway(loads(text))
    gw.start()
    await gw.books.start(asyncio.get_running_loop())
    try:
        yield gw
    finally:
        await gw.books.close(1.0)
        await gw.upstream.aclose()
        _drop_keys(prefix)

@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_stream_in_flight_across_a_reload_adds_its_charge_to_the_shared_counter(tmp_path, fast_sync):
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    text = _config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}\n{_store(tmp_path)}").replace(
        "fake_chunks: 4", "fake_chunks: 4, fake_chunk_delay: 0.05").replace("usd: 5,", "usd: 5000,")
    async with _serving(text, prefix) as gw:
        assert (await _ask(gw)).status == 200
        in_flight = asyncio.ensure_future(_ask(gw, stream=True))
        await asyncio.sleep(0.05)  # admitted, its chunks on their way
        gw.reload(loads(text + "server: {max_body_bytes: 100000}\n"))
        while gw.background:  # the reload retired the old keeper's share
            await asyncio.sleep(0.01)
        assert not in_flight.done(), "the stream must end after the reload"
        assert (await in_flight).status == 200
        ledger = await _ledger_spend(gw, "key", "k")
        assert await _shared_spend(gw, "key", "k", ledger) == (pytest.approx(ledger), pytest.approx(ledger)), \
            "both requests are in Redis, and the sync did not set the stream's charge back"


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_budget_added_by_a_reload_seeds_the_shared_counter_with_what_the_ledger_holds(tmp_path, fast_sync):
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    text = _config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}\n{_store(tmp_path)}")
    unbudgeted = text.replace(", budget: {usd: 5, period: week}", "")
    async with _serving(unbudgeted, prefix) as gw:
        for _ in range(3):
            assert (await _ask(gw)).status == 200  # dollars each, no budget yet
        ledger = await _ledger_spend(gw, "team", "t")
        assert ledger > 20
        gw.reload(loads(unbudgeted.replace("teams: [{name: t}]", "teams: [{name: t, budget: {usd: 20, period: week}}]")))
        while gw.background:  # the team's spend read from the ledger, the new share syncing meanwhile
            await asyncio.sleep(0.01)
        assert await _shared_spend(gw, "team", "t", ledger) == (pytest.approx(ledger), pytest.approx(ledger)), \
            "Redis was seeded with the ledger's spend, not with 0 before it was read"
        assert (await _ask(gw)).status == 429


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_budget_added_by_a_reload_seeds_the_shared_counter_with_what_the_ledger_has_queued(tmp_path, fast_sync):
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    text = _config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}\n{_store(tmp_path)}").replace(
        "flush_interval: 0.01", "flush_interval: 30")
    unbudgeted = text.replace(", budget: {usd: 5, period: week}", "")
    async with _serving(unbudgeted, prefix) as gw:
        for _ in range(3):
            assert (await _ask(gw)).status == 200  # dollars each, no budget yet, their records queued
        assert gw.books.ledger.queued == 3
        gw.reload(loads(unbudgeted.replace("teams: [{name: t}]", "teams: [{name: t, budget: {usd: 20, period: week}}]")))
        while gw.background:
            await asyncio.sleep(0.01)
        spent = 3 * 9.0
        assert await _shared_spend(gw, "team", "t", spent) == (pytest.approx(spent), pytest.approx(spent)), \
            "Redis was seeded with the spend the ledger holds and has queued"
        assert (await _ask(gw)).status == 429


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_database_back_after_the_start_seeds_the_shared_counter_with_what_the_ledger_holds(tmp_path, fast_sync):
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "db"
    folder.mkdir()
    text = _config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}\n{_store(folder)}").replace(
        "usd: 5,", "usd: 5000,")
    async with _serving(text, prefix) as earlier:  # a run that spent before this one
        for _ in range(3):
            assert (await _ask(earlier)).status == 200
    # (its Redis keys are dropped on leaving: a Redis that lost its keys since, or a new one)
    folder.rename(tmp_path / "away")  # the database is unavailable at start
    async with _serving(text, prefix) as gw:
        assert not gw.books.ledger.opened
        assert (await _ask(gw)).status == 200
        await asyncio.sleep(10 * fast_sync)  # the share syncs meanwhile
        (tmp_path / "away").rename(folder)  # back: the ledger opens, the spend is read, the record written
        ledger = await _ledger_spend(gw, "key", "k")
        assert ledger == pytest.approx(4 * 9.0)
        assert await _shared_spend(gw, "key", "k", ledger) == (pytest.approx(ledger), pytest.approx(ledger)), \
            "Redis holds the earlier run's spend and this one's, once each"


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_budget_removed_and_added_again_in_its_period_counts_the_ledgers_spend_once(tmp_path, fast_sync):
    """The counter of the budget's first life stays in Redis (till a day past the period): the
    budget added back found it there, so its seed (the ledger's spend, which holds what was spent
    without a budget meanwhile) was refused and that spend went uncounted."""
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    text = _config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}\n{_store(tmp_path)}").replace(
        "usd: 5,", "usd: 5000,")
    unbudgeted = text.replace(", budget: {usd: 5000, period: week}", "")
    async with _serving(text, prefix) as gw:
        assert (await _ask(gw)).status == 200
        first = await _ledger_spend(gw, "key", "k")
        assert await _shared_spend(gw, "key", "k", first) == (pytest.approx(first), pytest.approx(first))
        gw.reload(loads(unbudgeted))
        for _ in range(2):
            assert (await _ask(gw)).status == 200  # spent without a budget: in the ledger only
        ledger = await _ledger_spend(gw, "key", "k")
        assert ledger == pytest.approx(3 * first)
        gw.reload(loads(text))
        while gw.background:  # the budget's spend this week read from the ledger
            await asyncio.sleep(0.01)
        assert await _shared_spend(gw, "key", "k", ledger) == (pytest.approx(ledger), pytest.approx(ledger)), \
            "the week's spend is the ledger's, once: not the old counter's"
        assert (await _ask(gw)).status == 200
        after = await _ledger_spend(gw, "key", "k")
        assert await _shared_spend(gw, "key", "k", after) == (pytest.approx(after), pytest.approx(after)), \
            "and later charges add to it once"


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_charge_not_yet_synced_at_a_reload_reaches_the_shared_counter_once():
    """The new keeper's share syncs at once, before the old one handed it its charges: its seed
    (what this replica has seen spent, less what its own share still has to add) then held the
    old share's unsent charge, and the handed-over batch added it again."""
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    text = _config(f"rate_limits: {{backend: redis, key_prefix: {prefix}}}\n").replace("usd: 5,", "usd: 5000,")
    async with _serving(text, prefix) as gw:
        await asyncio.sleep(0.05)  # the share's first sync (at start) is done: the next is a second away
        assert (await _ask(gw)).status == 200
        spent = gw.books.budgets.book.accounts[("key", "k")].spent
        assert spent > 0
        gw.reload(loads(text + "server: {max_body_bytes: 100000}\n"))  # before the charge was synced
        while gw.background:
            await asyncio.sleep(0.01)
        await asyncio.sleep(budget_share.SYNC_SECONDS + 0.3)  # the new share's next sync sends the charge
        assert await _shared_spend(gw, "key", "k", spent) == (pytest.approx(spent), pytest.approx(spent)), \
            "the charge is in Redis once"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_a_redis_restarted_empty_gets_every_replicas_spend_back():
    """Redis restarts without persistence between two replicas' syncs. The counter was started
    again from the first replica's last view and its new charge, and the other replica's view
    (higher, but lower than that) was dropped: its charge, which the first never saw, was lost
    for the rest of the period. A view read before the counter's new life is compared with what
    that life started from, not with what was added since."""
    from tests.test_limits_redis import PrivateRedis
    server = PrivateRedis()
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}, redis_url: '{server.url}'}}"))
    now = ts("2026-11-30T12:00:00")
    one, two = BudgetKeeper(config, lambda: now), BudgetKeeper(config, lambda: now)
    assert one.share is not None and two.share is not None

    def charge(keeper: BudgetKeeper, usd: float) -> None:
        keeper.book.charge("k", "t", usd, now)
        keeper.share.add([(("key", "k"), keeper.book.accounts[("key", "k")])], usd)

    try:
        charge(one, 1.0)
        await one.share.sync(one.book, now)  # Redis: 1; the first replica saw 1
        charge(two, 2.0)
        await two.share.sync(two.book, now)  # Redis: 3; the second saw 3
        server.stop()
        server.start()  # empty: no persistence
        for keeper in (one, two):  # (the restart broke their connections: the first call after fails)
            with contextlib.suppress(redis.RedisError):
                await keeper.share.client.ping()
        charge(one, 4.0)
        await one.share.sync(one.book, now)  # back from its view (1), plus its charge
        await two.share.sync(two.book, now)  # its view (3) holds the 2 the first never saw
        await one.share.sync(one.book, now)
        assert one.book.accounts[("key", "k")].spent == pytest.approx(7.0)
        assert two.book.accounts[("key", "k")].spent == pytest.approx(7.0)
        charge(two, 0.5)
        for keeper in (two, one, two):
            await keeper.share.sync(keeper.book, now)
        assert one.book.accounts[("key", "k")].spent == pytest.approx(7.5), "and nothing counted twice after"
        assert two.book.accounts[("key", "k")].spent == pytest.approx(7.5)
    finally:
        await one.share.client.aclose()
        await two.share.client.aclose()
        server.stop()


async def test_an_outage_is_logged_once_across_reloads(caplog, fast_sync):
    """Each reload (and each run-time key change) puts a new share in place: it logged the
    outage again as if it were a new incident."""
    text = _config("rate_limits: {backend: redis, redis_url: 'redis://127.0.0.1:9/0'}\n")
    gw = Gateway(loads(text))
    gw.start()
    await gw.books.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.1)
        for n in range(2):
            gw.reload(loads(text + f"server: {{max_body_bytes: {100000 + n}}}\n"))
            await asyncio.sleep(0.1)
        lines = [r for r in caplog.records if "budgets: Redis is unavailable" in r.getMessage()]
        assert len(lines) == 1, "one line per incident"
    finally:
        await gw.books.close(1.0)
        await gw.upstream.aclose()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_a_share_a_reload_put_in_place_keeps_what_the_old_one_read_across_a_redis_restart():
    """As above, but the second replica was reloaded (or a run-time key changed) after Redis
    restarted empty and before its next sync: the new share was handed the old one's charges
    but not what the old one had read (its view, and of which life of the counter). Its seed
    then fell back to a floor (max, not add), which dropped what the first replica added to the
    counter's new life: spend lost for the rest of the period."""
    from tests.test_limits_redis import PrivateRedis
    server = PrivateRedis()
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}, redis_url: '{server.url}'}}"))
    now = ts("2026-11-30T12:00:00")
    one, two = BudgetKeeper(config, lambda: now), BudgetKeeper(config, lambda: now)
    assert one.share is not None and two.share is not None
    heir = None

    def charge(keeper: BudgetKeeper, usd: float) -> None:
        keeper.book.charge("k", "t", usd, now)
        keeper.share.add([(("key", "k"), keeper.book.accounts[("key", "k")])], usd)

    try:
        charge(one, 1.0)
        await one.share.sync(one.book, now)  # Redis: 1; the first replica saw 1
        charge(two, 2.0)
        await two.share.sync(two.book, now)  # Redis: 3; the second saw 3
        server.stop()
        server.start()  # empty: no persistence
        with contextlib.suppress(redis.RedisError):
            await one.share.client.ping()  # (the restart broke its connection: the first call after fails)
        charge(one, 4.0)
        await one.share.sync(one.book, now)  # back from its view (1), plus its charge: 5
        heir = BudgetKeeper(config, lambda: now)  # the second replica reloads
        assert heir.share is not None
        heir.adopt(two)
        two.hand_over()
        await heir.share.sync(heir.book, now)  # the view it inherited (3) holds the 2 the first never saw
        await one.share.sync(one.book, now)
        assert heir.book.accounts[("key", "k")].spent == pytest.approx(7.0)
        assert one.book.accounts[("key", "k")].spent == pytest.approx(7.0)
    finally:
        for keeper in (one, two, heir):
            if keeper is not None and keeper.share is not None:
                await keeper.share.client.aclose()
        server.stop()


def _budget_store_errors(gw: Gateway) -> float:
    """tollway_budget_store_errors_total{backend="redis"} as /metrics renders it (0 when absent)."""
    for line in gw.metrics.exposition().decode().splitlines():
        if line.startswith('tollway_budget_store_errors_total{backend="redis"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_failed_syncs_with_redis_are_counted_for_prometheus(fast_sync):
    """An outage of the Redis that shares the budgets was logged once per incident and counted
    nowhere: an operator alerting on Prometheus saw nothing while each replica counted its own
    spend (and the replicas together could spend up to N budgets)."""
    from tests.test_limits_redis import PrivateRedis
    server = PrivateRedis()
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    gw = Gateway(loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}, redis_url: '{server.url}'}}")))
    gw.start()
    await gw.books.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(10 * fast_sync)  # syncs that Redis answers
        assert _budget_store_errors(gw) == 0.0
        server.stop()
        deadline = time.monotonic() + 5.0
        while _budget_store_errors(gw) < 3:  # every failed sync counts, not once per incident
            assert time.monotonic() < deadline, "failed syncs were not counted"
            await asyncio.sleep(fast_sync)
        server.start()
        deadline = time.monotonic() + 5.0
        while gw.books.budgets.share._failing:  # (a sync answered: the incident is over)
            assert time.monotonic() < deadline, "the share did not sync again"
            await asyncio.sleep(fast_sync)
        counted = _budget_store_errors(gw)
        await asyncio.sleep(10 * fast_sync)
        assert _budget_store_errors(gw) == counted, "syncs Redis answers count nothing"
    finally:
        await gw.books.close(1.0)
        await gw.upstream.aclose()
        server.stop()


async def test_a_slow_database_at_start_neither_holds_the_worker_nor_forgets_the_spend(monkeypatch):
    """PostgreSQL answers at start but a long transaction holds the rollup tables the spend is
    read from (a migration, a VACUUM FULL, a slow report). The worker's start waited for the
    read with no bound (each statement up to the store's 10 s timeout), then gave up on it and
    counted from 0 for the rest of the period: a key that had spent its budget spent it again.
    The start waits at most its time for the database, then serves while the read is retried."""
    from tests.pg_databases import fresh_database, need_postgres
    from tollway.gateway.store import books as books_mod
    need_postgres()
    import asyncpg
    async with fresh_database() as url:
        text = _config(f'store: {{backend: postgres, url: "{url}"}}\nledger: {{flush_interval: 0.01}}\n')
        earlier = Gateway(loads(text))  # a run that spent the week's budget
        earlier.start()
        await earlier.books.start(asyncio.get_running_loop())
        assert (await _ask(earlier)).status == 200
        assert (await _ask(earlier)).status == 429
        await earlier.books.close(5.0)
        await earlier.upstream.aclose()

        monkeypatch.setattr(books_mod, "_OPEN_AT_START", 1.0)
        holder = await asyncpg.connect(url)
        gw = Gateway(loads(text))
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE usage_hourly, usage_daily IN ACCESS EXCLUSIVE MODE")
                gw.start()
                await gw.books.start(asyncio.get_running_loop())  # serves while the lock is held
            account = gw.books.budgets.book.accounts[("key", "k")]
            deadline = time.monotonic() + 30.0
            while account.spent < 5.0:  # read once the lock is gone
                assert time.monotonic() < deadline, "the spend the ledger holds was never read: counting from 0"
                await asyncio.sleep(0.05)
            assert (await _ask(gw)).status == 429
        finally:
            await holder.close()
            await gw.books.close(5.0)
            await gw.upstream.aclose()


@pytest.mark.skipif(not _redis_up(), reason="needs the Redis at 127.0.0.1:6379")
async def test_a_period_that_turns_during_a_sync_starts_from_nothing(slow_redis):
    """The week turned while a sync's reply was on its way (a request rolled the account): the
    sync then wrote the old week's total read from Redis into the new week's account, and the
    next sync seeded the new week's counter with it. The key carried last week's spend for the
    whole new week (a spent budget: refused until the next)."""
    prefix = f"tollway-test-{uuid.uuid4().hex[:8]}"
    config = loads(_config(f"rate_limits: {{backend: redis, key_prefix: {prefix}, redis_url: '{slow_redis.url}'}}")
                   .replace("usd: 5,", "usd: 50,"))
    before, after = ts("2026-12-06T23:59:59.9"), ts("2026-12-07T00:00:00.1")  # Sunday night, Monday
    keeper = BudgetKeeper(config, lambda: before)
    account = keeper.book.accounts[("key", "k")]

    def charge(usd: float, now: float) -> None:
        keeper.share.add(keeper.book.charge("k", "t", usd, now), usd)

    try:
        charge(30.0, before)
        await keeper.share.sync(keeper.book, before)
        assert account.spent == pytest.approx(30.0)
        slow_redis.delay = 0.2  # (within the share's timeout)
        syncing = asyncio.ensure_future(keeper.share.sync(keeper.book, before))
        await asyncio.sleep(0.1)  # its reply on the way ...
        charge(1.0, after)  # ... a request of the new week ends
        await syncing
        assert account.spent == pytest.approx(1.0), "the new week holds its own spend only"
        slow_redis.delay = 0.0
        await keeper.share.sync(keeper.book, after)
        assert account.spent == pytest.approx(1.0)
        new = float(await keeper.share.client.get(keeper.share.name(("key", "k"), account)) or 0.0)
        assert new == pytest.approx(1.0), "the new week's counter holds its own spend only"
    finally:
        _drop_keys(prefix)
        await keeper.share.client.aclose()


async def test_a_request_that_arrived_in_the_last_period_is_not_charged_to_the_new_one():
    """The ledger counts a request in the period it arrived in (its record's `ts`), and rebuilds
    the budgets from that at a restart; /admin/spend says the same. A request that arrived at
    23:59:59 on the period's last day and ended after midnight must not eat the new period's
    budget, or /admin/budgets disagrees with the ledger until the next restart, which forgets it."""
    gw = Gateway(loads(_config()))
    gw.start()
    keeper = gw.books.budgets
    clock = [ts("2026-11-30T00:00:01")]  # Monday: the week turned a second ago
    keeper.clock = lambda: clock[0]
    try:
        ex = Exchange("req_across_midnight", "chat")
        ex.ts = ts("2026-11-29T23:59:59")  # arrived on Sunday, last week
        ex.key_name, ex.team, ex.cost_usd = "k", "t", 4.0
        keeper.charge(ex)
        late = Exchange("req_this_week", "chat")
        late.ts = clock[0]
        late.key_name, late.team, late.cost_usd = "k", "t", 0.5
        keeper.charge(late)
        status = {d["owner"]: d for d in keeper.book.status(clock[0])}
        assert status["key"]["spent_usd"] == pytest.approx(0.5), "this week holds this week's request alone"
        assert status["key"]["remaining_usd"] == pytest.approx(4.5)
        assert keeper.book.accounts[("key", "k")].spent == pytest.approx(0.5)
    finally:
        await gw.upstream.aclose()


async def test_a_spend_read_that_fails_unexpectedly_is_logged_and_tried_again(tmp_path, monkeypatch, caplog):
    """The background spend read retried only what the store wraps (StoreError): any other
    failure (a driver's own exception, a bug) ended its task unseen, and the budgets stayed
    unread, and unshared with Redis, for the rest of the period. It is logged and tried again."""
    from tollway.gateway.store import books as books_mod
    text = _config(f"store: {{backend: sqlite, path: '{tmp_path / 'ledger.db'}'}}\nledger: {{flush_interval: 0.01}}\n")
    earlier = Gateway(loads(text))  # a run that spent the week's budget
    earlier.start()
    await earlier.books.start(asyncio.get_running_loop())
    assert (await _ask(earlier)).status == 200
    await earlier.books.close(5.0)
    await earlier.upstream.aclose()

    monkeypatch.setattr(books_mod, "_READ_AGAIN", 0.05)
    gw = Gateway(loads(text))
    gw.start()
    store = gw.books.ledger.store
    real, failures = store.spend, [RuntimeError("a driver's own error")]

    async def spend(query):
        if failures:
            raise failures.pop()
        return await real(query)

    monkeypatch.setattr(store, "spend", spend)
    try:
        with caplog.at_level(logging.WARNING):
            await gw.books.start(asyncio.get_running_loop())
            account = gw.books.budgets.book.accounts[("key", "k")]
            deadline = time.monotonic() + 10.0
            while account.spent < 5.0:
                assert time.monotonic() < deadline, "the spend read ended at its first failure"
                await asyncio.sleep(0.05)
        assert any("a driver's own error" in (r.exc_text or "") + r.getMessage() for r in caplog.records)
        assert (await _ask(gw)).status == 429
    finally:
        await gw.books.close(5.0)
        await gw.upstream.aclose()

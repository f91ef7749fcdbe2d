"""The KeyStore half of both stores, SQLite and PostgreSQL, held to the same answers: a save is
all or nothing under one new version, an expectation or a uniqueness rule that fails is a
Conflict that writes nothing (and of two saves racing for one record exactly one wins),
`changes(since)` is exactly what is newer, the audit trail reads newest first, last use moves
forward only, PostgreSQL pushes saves to other processes, a version-1 database migrates with
its ledger intact, and failures are StoreErrors without a password.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import msgspec
import pytest
from msgspec.structs import astuple

from tests.pg_databases import drop_database, pg_database, target  # noqa: F401 - fixtures by name
from tests.test_store import BASE, _records
from tollway.core.config import Budget, Limit
from tollway.core.ledger.record import FIELDS
from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change, Snapshot
from tollway.gateway.store import Conflict, RequestFilter, StoreError
from tollway.gateway.store import postgres as pg_module
from tollway.gateway.store import sqlite as sqlite_module
from tollway.gateway.store.postgres import PostgresStore
from tollway.gateway.store.sqlite import SqliteStore

Store = SqliteStore | PostgresStore


def _make(target: str) -> Store:
    return PostgresStore(target) if target.startswith("postgresql://") else SqliteStore(target)


@pytest.fixture
async def store(target: str) -> AsyncIterator[Store]:
    s = _make(target)
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


def _key(n: int, name: str | None = None, **fields: object) -> ApiKey:
    key = ApiKey(id=f"key_{n:024x}", name=name or f"key-{n}", key_hash=f"digest-{n:08d}", created_at=BASE + n)
    return msgspec.structs.replace(key, **fields) if fields else key


def _audit(ts: float, target: str = "t", team: str | None = None, action: str = "key.create") -> AuditEntry:
    return AuditEntry(ts=ts, actor="admin", action=action, target=target, team=team, after={"name": target})


async def _raw(target: str, sql: str) -> list[tuple[object, ...]]:
    """Rows straight from the database, past the store."""
    if target.startswith("postgresql://"):
        conn = await asyncpg.connect(target)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    with sqlite3.connect(target) as db:
        return list(db.execute(sql))


async def _nothing_written(store: Store, version: int, audit: int) -> None:
    assert await store.key_version() == version
    assert len(await store.audit(None, 1000)) == audit


# -- reading and writing ----------------------------------------------------------------

async def test_a_fresh_store_holds_nothing(store: Store):
    assert await store.key_version() == 0
    assert await store.changes(0) == Snapshot(0, [], [])
    assert await store.key("key_nope") is None and await store.team("nope") is None
    assert await store.audit(None, 10) == [] and await store.last_used(["key_nope"]) == {}


async def test_a_save_stamps_its_records_with_a_new_version_and_they_read_back_whole(store: Store, target: str):
    full = _key(1, team="search", models=["gpt-4o", "claude-*"], limits=[Limit(requests=10, per="minute"), Limit(
        cost_usd=1.5, model="gpt-4o")], budget=Budget(25.0, "week"), expires_at=BASE + 86400.125,
        metadata={"owner": "ana ☃", "n": 3, "ratio": 0.25, "on": True, "none": None, "odd": "nul\x00byte"},
        previous_hash="digest-old", previous_until=BASE + 3600)
    team = ApiTeam(name="search", created_at=BASE, models=["gpt-4o"], limits=[Limit(requests=100)], budget=Budget(100.0))
    entry = _audit(BASE, full.id, "search")
    assert await store.save(Change(keys=[full], teams=[team], audit=[entry], expect={f"key:{full.id}": 0})) == 1
    assert await store.save(Change(keys=[_key(2)])) == 2

    assert await store.key(full.id) == msgspec.structs.replace(full, version=1)
    assert await store.team("search") == msgspec.structs.replace(team, version=1)
    assert await store.audit(None, 10) == [entry]
    assert await store.key_version() == 2
    # The doc's version is the column's.
    for version, doc in await _raw(target, "SELECT version, doc FROM api_keys"):
        assert msgspec.json.decode(str(doc), type=ApiKey).version == version


async def test_changes_are_exactly_what_is_newer_in_version_order(store: Store):
    a, b, c = _key(1), _key(2), _key(3)
    await store.save(Change(keys=[a, b], teams=[ApiTeam("red", BASE)]))  # 1
    await store.save(Change(keys=[c]))  # 2
    await store.save(Change(keys=[msgspec.structs.replace(a, revoked_at=BASE + 9)], teams=[
        ApiTeam("red", BASE, deleted_at=BASE + 9)]))  # 3: a revoked key and a deleted team are changes too
    whole = await store.changes(0)
    assert whole.version == 3
    assert [(k.id, k.version) for k in whole.keys] == [(b.id, 1), (c.id, 2), (a.id, 3)]
    assert [(t.name, t.version, t.deleted_at) for t in whole.teams] == [("red", 3, BASE + 9)]
    assert [k.id for k in (await store.changes(1)).keys] == [c.id, a.id]
    assert (await store.changes(2)).keys[0].revoked_at == BASE + 9
    assert await store.changes(3) == Snapshot(3, [], [])


# -- conflicts --------------------------------------------------------------------------

@pytest.mark.parametrize("expect, says", [
    ({"key:key_000000000000000000000001": 0}, "exists already"),
    ({"key:key_000000000000000000000001": 7}, "changed by someone else"),
    ({"key:key_0000000000000000000000ff": 1}, "does not exist"),
    ({"team:red": 0}, "exists already"),
    ({"key:key_000000000000000000000001": 1, "team:red": 2}, "team 'red' was changed"),
])
async def test_an_expectation_that_no_longer_holds_is_a_conflict_that_writes_nothing(
        store: Store, expect: dict[str, int], says: str):
    await store.save(Change(keys=[_key(1)], teams=[ApiTeam("red", BASE)], audit=[_audit(BASE)]))
    change = Change(keys=[_key(1, "renamed"), _key(9)], teams=[ApiTeam("blue", BASE)], audit=[_audit(BASE + 1)],
                    expect=expect)
    with pytest.raises(Conflict, match=says):
        await store.save(change)
    await _nothing_written(store, 1, 1)
    assert (await store.key(_key(1).id)).name == "key-1"  # type: ignore[union-attr]
    assert await store.key(_key(9).id) is None and await store.team("blue") is None


async def test_a_malformed_expectation_is_the_callers_bug(store: Store):
    with pytest.raises(ValueError, match="key:<id>"):
        await store.save(Change(keys=[_key(1)], expect={"k1": 0}))
    await _nothing_written(store, 0, 0)


async def test_a_name_is_never_reused_not_even_a_revoked_keys(store: Store):
    first = _key(1, "ci")
    await store.save(Change(keys=[first]))
    with pytest.raises(Conflict, match="a key named 'ci' exists already"):
        await store.save(Change(keys=[_key(2, "ci")], teams=[ApiTeam("red", BASE)], audit=[_audit(BASE)]))
    await _nothing_written(store, 1, 0)
    assert await store.team("red") is None
    await store.save(Change(keys=[msgspec.structs.replace(first, revoked_at=BASE + 5)]))
    with pytest.raises(Conflict, match="'ci'"):  # the ledger's and the budgets' history of 'ci' is the old key's
        await store.save(Change(keys=[_key(2, "ci")]))
    assert await store.save(Change(keys=[_key(2, "ci-2")])) == 3


async def test_a_team_is_not_deleted_while_a_key_that_is_not_revoked_is_in_it(store: Store):
    """Checked in the save's transaction against every key saved before it (a process's copy of
    the keys may be seconds old): the admin API's 409."""
    red, key = ApiTeam("red", BASE), _key(1, team="red")
    await store.save(Change(keys=[key], teams=[red]))  # 1
    gone = msgspec.structs.replace(red, deleted_at=BASE + 5)
    with pytest.raises(Conflict, match="Team 'red' still has 1 live key"):
        await store.save(Change(teams=[gone], audit=[_audit(BASE)]))
    await _nothing_written(store, 1, 0)
    assert (await store.team("red")).deleted_at is None  # type: ignore[union-attr]
    # The change's own keys count as it leaves them: revoked in the same change, the team may go.
    assert await store.save(Change(keys=[msgspec.structs.replace(key, revoked_at=BASE + 5)], teams=[gone])) == 2
    assert (await store.team("red")).deleted_at == BASE + 5  # type: ignore[union-attr]


async def test_a_digest_twice_is_a_conflict_that_names_the_key_not_the_digest(store: Store):
    await store.save(Change(keys=[_key(1)]))
    twin = _key(2, "twin", key_hash=_key(1).key_hash)
    with pytest.raises(Conflict) as caught:
        await store.save(Change(keys=[_key(3), twin], audit=[_audit(BASE)]))
    assert "'twin'" in str(caught.value) and twin.key_hash not in str(caught.value)
    await _nothing_written(store, 1, 0)
    assert await store.key(_key(3).id) is None  # the change's other key went nowhere either


async def test_of_two_saves_racing_for_one_record_exactly_one_wins(target: str):
    one, other = _make(target), _make(target)  # two processes, one database
    await one.open()
    await other.open()
    try:
        key = _key(1)
        for round_ in range(5):
            expect = {f"key:{key.id}": key.version}
            a = msgspec.structs.replace(key, name=f"a-{round_}")
            b = msgspec.structs.replace(key, name=f"b-{round_}")
            got = await asyncio.gather(one.save(Change(keys=[a], expect=expect)),
                                       other.save(Change(keys=[b], expect=expect)), return_exceptions=True)
            won = [(v, k) for v, k in zip(got, (a, b)) if isinstance(v, int)]
            assert len(won) == 1 and sum(isinstance(v, Conflict) for v in got) == 1, got
            version, winner = won[0]
            key = msgspec.structs.replace(winner, version=version)
            assert await other.key(key.id) == key and await one.key_version() == version == round_ + 1
    finally:
        await one.aclose()
        await other.aclose()


# -- the audit trail and last use -------------------------------------------------------

async def test_the_audit_trail_reads_newest_first_from_since_with_a_limit_and_by_team(store: Store):
    e1, e2, e3, e4 = _audit(10, "a", "red"), _audit(20, "b", "blue"), _audit(20, "c", "red"), _audit(30, "d")
    await store.save(Change(audit=[e1, e2]))
    await store.save(Change(audit=[e3, e4]))
    assert await store.audit(None, 100) == [e4, e3, e2, e1]  # a tie in ts: the later written first
    assert await store.audit(20, 100) == [e4, e3, e2]  # since is inclusive
    assert await store.audit(None, 2) == [e4, e3]
    assert await store.audit(None, 100, team="red") == [e3, e1]
    assert await store.audit(15, 1, team="red") == [e3]
    assert await store.audit(31, 100) == []


async def test_last_use_moves_forward_only_and_bumps_no_version(store: Store):
    k1, k2 = _key(1), _key(2)
    await store.save(Change(keys=[k1, k2]))
    await store.touch({k1.id: BASE + 100})
    assert await store.last_used([k1.id, k2.id, "key_nope"]) == {k1.id: BASE + 100}
    await store.touch({k1.id: BASE + 50, k2.id: BASE + 70, "key_nope": BASE})  # back in time; an unknown id
    assert await store.last_used([k1.id, k2.id]) == {k1.id: BASE + 100, k2.id: BASE + 70}
    assert await store.key_version() == 1 and await store.changes(1) == Snapshot(1, [], [])
    await store.save(Change(keys=[_key(1, "renamed")]))  # a save keeps the last use
    assert await store.last_used([k1.id]) == {k1.id: BASE + 100}
    await store.touch({})
    assert await store.last_used([]) == {}


# -- pushed changes ---------------------------------------------------------------------

async def test_sqlite_cannot_push(tmp_path):
    store = SqliteStore(str(tmp_path / "ledger.db"))
    await store.open()
    assert await store.listen(lambda: None) is False
    await store.aclose()


async def _listening(url: str) -> int:
    return int((await _raw(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tollway-listen' "
                                "AND datname = current_database()"))[0][0])


async def _until(check: Callable[[], object], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_postgres_pushes_another_stores_save_and_closes_the_listener_with_the_store(pg_database: str):
    one, other = PostgresStore(pg_database), PostgresStore(pg_database)
    await one.open()
    await other.open()
    heard: list[int] = []
    try:
        assert await one.listen(lambda: heard.append(1)) is True
        assert await _listening(pg_database) == 1
        await other.save(Change(keys=[_key(1)]))
        await _until(lambda: len(heard) == 1)
        with pytest.raises(Conflict):  # a save that fails notifies no one
            await other.save(Change(keys=[_key(2)], expect={f"key:{_key(1).id}": 0}))
        await asyncio.sleep(0.3)
        assert len(heard) == 1
        await other.save(Change(keys=[_key(3)]))
        await _until(lambda: len(heard) == 2)
        await asyncio.sleep(0.1)
        assert len(heard) == 2
    finally:
        await one.aclose()
        await other.aclose()
    assert await _listening(pg_database) == 0


async def test_listens_at_once_share_one_connection(pg_database: str):
    one, other = PostgresStore(pg_database), PostgresStore(pg_database)
    await one.open()
    await other.open()
    heard: list[str] = []
    try:
        assert await asyncio.gather(one.listen(lambda: heard.append("a")), one.listen(lambda: heard.append("b"))) \
            == [True, True]
        assert await _listening(pg_database) == 1
        await other.save(Change(keys=[_key(1)]))
        await _until(lambda: sorted(heard) == ["a", "b"])
    finally:
        await one.aclose()
        await other.aclose()
    assert await _listening(pg_database) == 0


async def test_a_dropped_listener_raises_nothing_later_and_listen_makes_a_new_one(pg_database: str):
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    one, other = PostgresStore(pg_database), PostgresStore(pg_database)
    await one.open()
    await other.open()
    heard: list[str] = []
    try:
        await one.listen(lambda: heard.append("first"))
        await _raw(pg_database, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = 'tollway-listen' AND datname = current_database()")
        await _until(lambda: not one._listener.listening)
        await other.save(Change(keys=[_key(1)]))  # nobody listens: nothing to hear, nothing raised
        assert await one.key_version() == 1  # the pool is unaffected
        assert await one.listen(lambda: heard.append("second")) is True
        await other.save(Change(keys=[_key(2)]))
        await _until(lambda: heard == ["second"])
    finally:
        await one.aclose()
        await other.aclose()
        loop.set_exception_handler(None)
    assert reported == []
    assert await _listening(pg_database) == 0


# -- migration and failures -------------------------------------------------------------

def _write_version_1_rows(module: object, old: pytest.MonkeyPatch) -> None:
    """Make the store write records as the version 1 gateway did: without the columns later
    migrations added (guardrails, migration 3)."""
    v1 = FIELDS[:FIELDS.index("guardrails")]
    if module is pg_module:  # a batch is JSON taken apart by the server: name only v1's columns
        old.setattr(module, "_WRITE", module._WRITE.replace(", guardrails)", ")").replace(", r.guardrails FROM", " FROM")
                    .replace(", guardrails jsonb)", ")"))
        return
    old.setattr(module, "_INSERT_HEAD", f"INSERT INTO usage_records ({', '.join(v1)}) VALUES ")
    old.setattr(module, "_ROW", "(" + ", ".join("?" * len(v1)) + ")")
    old.setattr(module, "astuple", lambda record: astuple(record)[:len(v1)])


async def test_a_version_1_database_migrates_to_the_key_tables_with_its_ledger_intact(
        target: str, monkeypatch: pytest.MonkeyPatch):
    module = pg_module if target.startswith("postgresql://") else sqlite_module
    with monkeypatch.context() as old:  # the gateway before keys: migration 1 only
        old.setattr(module, "MIGRATIONS", module.MIGRATIONS[:1])
        old.setattr(module, "VERSION", 1)
        _write_version_1_rows(module, old)
        before = _make(target)
        await before.open()
        records = _records(50, BASE, 3600)
        await before.write(records)
        await before.aclose()
    assert await _raw(target, "SELECT version FROM tollway_schema") == [(1,)]
    with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
        await _raw(target, "SELECT * FROM api_keys")

    after = _make(target)
    await after.open()
    try:
        assert await _raw(target, "SELECT version FROM tollway_schema") == [(module.VERSION,)]
        got = await after.requests(RequestFilter(limit=1000))
        assert sorted(r.request_id for r in got) == sorted(r.request_id for r in records)
        assert await after.key_version() == 0
        assert await after.save(Change(keys=[_key(1)])) == 1
    finally:
        await after.aclose()


async def test_a_postgres_failure_is_a_store_error_without_the_password(pg_database: str):
    url = pg_database.replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@")  # trust auth: any password
    store = PostgresStore(url)
    await store.open()
    await store.save(Change(keys=[_key(1)]))
    await drop_database(pg_database)  # (WITH FORCE: the pool's connections go too)
    calls = [store.key_version(), store.changes(0), store.key(_key(1).id), store.save(Change(keys=[_key(2)])),
             store.touch({_key(1).id: BASE}), store.audit(None, 5), store.listen(lambda: None)]
    for call in calls:
        with pytest.raises(StoreError) as caught:
            await call
        assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)
    await store.aclose()


@pytest.mark.parametrize("password", ["S3cr3tPart/Rest+xyz=", "S3cr3tPart#Rest", "S3cr3tPart?Rest"])
async def test_a_url_the_driver_cannot_parse_is_named_never_quoted(password: str):
    """asyncpg's parse errors quote the fragment they choked on: for a password holding an
    unescaped / # or ?, a piece of the password that no scrubbing can recognise."""
    store = PostgresStore(f"postgresql://postgres:{password}@127.0.0.1:5432/tollway")
    with pytest.raises(StoreError) as caught:
        await store.open()
    said = str(caught.value)
    assert "S3cr3tPart" not in said and "Rest" not in said, said
    assert "store.url is not a valid PostgreSQL URL (ValueError)" in said and "postgres:***@127.0.0.1:5432" in said


async def test_a_sqlite_failure_is_a_store_error(tmp_path):
    path = str(tmp_path / "ledger.db")
    store = SqliteStore(path)
    await store.open()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE api_keys")
    with pytest.raises(StoreError, match="no such table: api_keys"):
        await store.key("key_x")
    with pytest.raises(StoreError, match="no such table: api_keys"):
        await store.save(Change(keys=[_key(1)]))
    assert await store.key_version() == 0  # the failed save rolled its bump back
    await store.aclose()
    with pytest.raises(StoreError, match="not open"):
        await store.key_version()

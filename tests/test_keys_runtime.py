"""Run-time keys in the runtime's key table and the directory, without servers: what each
digest finds, what a revoked, expired or rotated key says at a given instant (the clock
injected), how a team narrows its keys' models, and how the directory takes changes."""
from __future__ import annotations

import pytest

from tollway.core.config import Limit, loads
from tollway.core.errors import GatewayError
from tollway.core.security.keys import hash_key
from tollway.core.tenancy.records import ApiKey, ApiTeam, Snapshot
from tollway.gateway.runtime import ApiTables, Runtime
from tollway.gateway.tenancy.directory import Directory

CONFIG = loads("""
providers: [{name: f, schema: fake}]
models:
  - {name: small, targets: [{provider: f}]}
  - {name: large, targets: [{provider: f}]}
keys: [{name: alice, key_hash: "%s", team: search}]
teams: [{name: search, models: [small]}]
""" % hash_key("alice-key"))
T0 = 1_800_000_000.0


def _key(**fields: object) -> ApiKey:
    base: dict[str, object] = {"id": "key_1", "name": "svc", "key_hash": hash_key("new"), "created_at": T0}
    return ApiKey(**{**base, **fields})  # type: ignore[arg-type]


def _runtime(*keys: ApiKey, teams: tuple[ApiTeam, ...] = ()) -> Runtime:
    tables = ApiTables({k.id: k for k in keys}, {t.name: t for t in teams}, {k.id: k.as_config_key() for k in keys})
    return Runtime(CONFIG, None, api=tables)


def _refusal(rt: Runtime, presented: str, now: float) -> str | None:
    record = rt.keys.lookup(presented)
    assert record is not None
    try:
        if record.checked:
            record.refuse(now)
    except GatewayError as exc:
        assert exc.status == 401 and exc.code == "invalid_api_key"
        return exc.message
    return None


def test_a_live_key_is_found_and_unchecked():
    rt = _runtime(_key())
    record = rt.keys.lookup("new")
    assert record is not None and record.key_id == "key_1" and not record.checked
    assert rt.keys.lookup("other") is None
    assert [k.name for k in rt.config.keys] == ["alice", "svc"], "limits and budgets see it like a config key"
    assert [k.name for k in rt.file_config.keys] == ["alice"]


def test_expiry_at_an_injected_instant():
    rt = _runtime(_key(expires_at=T0 + 60))
    assert _refusal(rt, "new", T0 + 59.9) is None
    assert _refusal(rt, "new", T0 + 60) == "This key expired at 2027-01-15T08:01:00.000Z."


def test_a_revoked_key_says_so_and_nothing_else():
    rt = _runtime(_key(revoked_at=T0, previous_hash=hash_key("old"), previous_until=T0 + 3600))
    assert _refusal(rt, "new", T0) == "This key was revoked."
    assert _refusal(rt, "old", T0) == "This key was revoked.", "its grace ends with the revoke"
    assert "svc" not in [k.name for k in rt.config.keys], "a revoked key draws on no limit or budget"


def test_a_rotation_keeps_the_old_key_through_its_grace():
    rt = _runtime(_key(previous_hash=hash_key("old"), previous_until=T0 + 10))
    assert _refusal(rt, "old", T0 + 9) is None and _refusal(rt, "new", T0 + 9) is None
    assert "replaced by a rotation" in (_refusal(rt, "old", T0 + 10) or "")
    assert _refusal(rt, "new", T0 + 1e6) is None
    both = _runtime(_key(previous_hash=hash_key("old"), previous_until=T0 + 10, expires_at=T0 + 5))
    assert (_refusal(both, "old", T0 + 6) or "").startswith("This key expired"), "the key's own expiry comes first"


def test_a_team_narrows_its_keys_models():
    rt = _runtime(_key(team="ads", models=["small", "large"]),
                  teams=(ApiTeam("ads", T0, models=["large"]),))
    api = rt.keys.lookup("new")
    assert api is not None and api.may_use("large") and not api.may_use("small")
    alice = rt.keys.lookup("alice-key")
    assert alice is not None and alice.may_use("small") and not alice.may_use("large"), "config teams narrow too"
    gone = _runtime(_key(team="ads"), teams=(ApiTeam("ads", T0, models=["large"], deleted_at=T0),))
    assert "ads" not in [t.name for t in gone.config.teams]


def test_a_key_named_like_a_config_key_does_not_take_its_limits():
    rt = _runtime(_key(name="alice", limits=[Limit(requests=1, per="1m")]))
    assert [k.name for k in rt.config.keys] == ["alice"] and rt.config.keys[0].limits == []


@pytest.mark.parametrize("revoked", [False, True])
def test_key_named_finds_the_config_files_key_whatever_run_time_key_had_its_name(revoked: bool):
    """The file's key wins its name (docs/keys.md): a plugin mapping a caller to a key by name
    (the authenticate stage's ctx.key_named) gets it, not the refused run-time record."""
    rt = _runtime(_key(name="alice", revoked_at=T0 if revoked else None))
    found = rt.key_named("alice")
    assert found is not None and found.key_id == "config:alice" and found.refusal is None


def test_key_named_finds_a_rotated_keys_current_record():
    rt = _runtime(_key(key_hash=hash_key("newer"), previous_hash=hash_key("new"), previous_until=T0 + 5))
    found = rt.key_named("svc")
    assert found is not None and found.key_hash == hash_key("newer")


class _NoStore:
    backend = "none"


def test_the_directory_takes_newer_records_only_and_moves_its_version_on_full_reads():
    directory = Directory(_NoStore())  # type: ignore[arg-type]
    seen: list[tuple[int, bool]] = []
    directory.on_change = lambda change: seen.append((len(change.tables.keys), change.light))
    assert directory.apply(Snapshot(3, keys=[_key(version=3)]), contiguous=False)
    assert directory.version == 0, "one write of this process: another replica's may sit before it"
    assert not directory.apply(Snapshot(2, keys=[_key(version=2, name="stale")]))
    assert directory.key("key_1").name == "svc" and directory.version == 2  # type: ignore[union-attr]
    assert directory.apply(Snapshot(5, keys=[_key(version=5, revoked_at=T0)], teams=[ApiTeam("t", T0, version=4)]))
    assert directory.version == 5 and seen == [(1, True), (1, False)], "a team change is no light one"
    assert directory.team("t") is not None and [k.revoked_at for k in directory.keys()] == [T0]


def test_the_runtime_of_a_previous_table_is_not_changed_by_a_new_one():
    directory = Directory(_NoStore())  # type: ignore[arg-type]
    directory.apply(Snapshot(1, keys=[_key(version=1)]))
    rt = Runtime(CONFIG, None, api=directory.tables)
    directory.apply(Snapshot(2, keys=[_key(version=2, revoked_at=T0)]))
    assert _refusal(rt, "new", T0) is None, "a request in flight keeps its runtime"
    assert _refusal(Runtime(CONFIG, None, api=directory.tables), "new", T0) == "This key was revoked."


@pytest.mark.parametrize("count", [1, 1000])
def test_many_keys_are_one_table(count: int):
    keys = [_key(id=f"key_{i}", name=f"svc-{i}", key_hash=hash_key(f"k{i}")) for i in range(count)]
    rt = _runtime(*keys)
    assert all(rt.keys.lookup(f"k{i}") is not None for i in range(0, count, max(1, count // 10)))


def test_a_light_change_patches_the_table_in_place():
    directory = Directory(_NoStore())  # type: ignore[arg-type]
    changes = []
    directory.on_change = changes.append
    directory.apply(Snapshot(1, keys=[_key(version=1)]))
    rt = Runtime(CONFIG, None, api=directory.tables)
    rotated = _key(version=2, key_hash=hash_key("newer"), previous_hash=hash_key("new"), previous_until=T0 + 5)
    directory.apply(Snapshot(2, keys=[rotated, _key(id="key_2", name="other", key_hash=hash_key("two"), version=2)]))
    assert changes[-1].light
    rt.patch_keys(changes[-1].tables, changes[-1].keys)
    assert _refusal(rt, "newer", T0) is None and _refusal(rt, "new", T0 + 1) is None and _refusal(rt, "two", T0) is None
    assert "rotation" in (_refusal(rt, "new", T0 + 6) or "")
    directory.apply(Snapshot(3, keys=[_key(version=3, limits=[Limit(requests=1, per="1m")])]))
    assert not changes[-1].light, "limits: the limiter must learn of it"


def test_a_rebuild_reuses_what_did_not_change():
    from tollway.core.limits.policy import LimitPolicy

    limited = _key(limits=[Limit(requests=5, per="1m")])
    first = _runtime(limited)
    tables = ApiTables({limited.id: limited}, {}, first.api.config_keys)
    second = Runtime(CONFIG, None, first, api=tables)
    assert second.keys.lookup("new") is first.keys.lookup("new"), "the same key object: its records are kept"
    policy = LimitPolicy(second.config)
    again = LimitPolicy(second.config, previous=policy)
    assert again.buckets == policy.buckets
    assert all(again.buckets[i] is policy.buckets[i] for i in policy.buckets), "kept, not made again"
    changed = _key(limits=[Limit(requests=9, per="1m")], version=2)
    third = Runtime(CONFIG, None, second, api=ApiTables({changed.id: changed}, {}, {changed.id: changed.as_config_key()}))
    assert third.keys.lookup("new") is not second.keys.lookup("new")
    assert {b.capacity for b in LimitPolicy(third.config, previous=again).buckets.values()} == {9.0}


def test_a_key_whose_team_is_gone_or_whose_name_the_config_took_is_refused():
    orphan = _runtime(_key(team="ads"))  # no team 'ads' in the config or the store
    assert "team 'ads' no longer exists" in (_refusal(orphan, "new", T0) or "")
    clash = _runtime(_key(name="alice"))  # the config file now has a key 'alice'
    assert "config file" in (_refusal(clash, "new", T0) or "")
    assert [k.key_hash for k in clash.config.keys] == [hash_key("alice-key")], "the file's key keeps its limits alone"


def test_freed_bucket_slots_are_reused_only_after_a_quarantine():
    from tollway.core.limits.policy import LimitPolicy
    from tollway.gateway.limits.memory import MemoryBuckets

    now = [0.0]
    store = MemoryBuckets(clock=lambda: now[0])
    for i in range(3):  # a key with a limit made, then revoked (its bucket gone), three times over
        rt = _runtime(_key(id=f"key_{i}", name=f"k{i}", key_hash=hash_key(f"s{i}"), limits=[Limit(requests=5, per="1m")]))
        store.configure(LimitPolicy(rt.config))
        now[0] += 700.0
    assert len(store._table) == 2, "the first key's slot, freed 700 s before, went to the third"
    assert len(store._slot) == 1


async def test_a_key_rebuild_that_fails_still_refuses_what_was_revoked_and_is_tried_again(tmp_path, monkeypatch, caplog):
    """A change to a key with a budget rebuilds the runtime, limiter and budgets from a loop
    callback. If that raises, the directory has already moved past the change: the revocation
    must still apply (patched in place), the failure be logged, and the rebuild be retried."""
    import asyncio
    import logging

    from tollway.core.config import Budget
    from tollway.core.tenancy.inputs import KeyCreate, KeyPatch
    from tollway.core.tenancy.roles import OWNER
    from tollway.gateway import app

    gw = app.Gateway(loads(f"""
providers: [{{name: f, schema: fake}}]
models: [{{name: small, targets: [{{provider: f}}]}}, {{name: big, targets: [{{provider: f}}]}}]
store: {{backend: sqlite, path: {tmp_path / "t.db"}}}
"""))
    assert gw.directory is not None
    await gw.directory.open()
    gw.start()
    actions, plugins = gw.serving.actions, gw.plugins
    assert actions is not None
    try:
        minted = await actions.create_key(OWNER, KeyCreate(name="svc", budget=Budget(usd=5, period="month")))
        await _until(lambda: gw.runtime.keys.lookup(minted.secret) is not None)
        narrowed = await actions.create_key(OWNER, KeyCreate(name="narrowed", budget=Budget(usd=5, period="month")))
        await _until(lambda: gw.runtime.keys.lookup(narrowed.secret) is not None)
        failing = [True]
        real_books = app.Books

        def books(*args, **kwargs):  # stands for any part of the rebuild failing for a while
            if failing[0]:
                raise RuntimeError("the budgets could not be built")
            return real_books(*args, **kwargs)
        monkeypatch.setattr(app, "Books", books)
        monkeypatch.setattr(app, "KEY_RETRY_SECONDS", 0.05, raising=False)
        with caplog.at_level(logging.ERROR, logger="tollway"):
            await actions.revoke_key(OWNER, minted.key.id)
            await actions.update_key(OWNER, narrowed.key.id, KeyPatch(models=["big"]))
            await asyncio.sleep(0.2)  # several retries, all failing
        found = gw.runtime.keys.lookup(minted.secret)
        assert found is not None and found.refusal == "This key was revoked.", "a revoked key is refused even when the rebuild failed"
        kept = gw.runtime.keys.lookup(narrowed.secret)
        assert kept is not None and not kept.may_use("small"), "a narrowed models list applies even when the rebuild failed"
        logged = [r for r in caplog.records if r.name == "tollway" and r.levelno == logging.ERROR]
        assert len(logged) == 1 and "the budgets could not be built" in logged[0].getMessage(), "once per incident"
        failing[0] = False
        # rebuilt: the revoked key left the limits and budgets
        await _until(lambda: [k.name for k in gw.runtime.config.keys] == ["narrowed"])
        assert gw.plugins is plugins, "a key change does not rebuild the plugins"
    finally:
        await gw._close_providers(list(gw.runtime.providers.values()))
        await gw.directory.close(gw.serving.last_used)
        await gw.upstream.aclose()


async def test_a_key_is_not_saved_into_a_team_deleted_after_it_was_read(tmp_path):
    """The key's save pins its run-time team's version: a team deleted between the check that
    it exists and the save (by another replica, `tollway keys`, a concurrent request) makes the
    save a 409, not a key in a team that no longer exists."""
    from tollway.core.tenancy.inputs import KeyCreate, TeamCreate
    from tollway.core.tenancy.roles import OWNER
    from tollway.gateway.store.sqlite import SqliteStore
    from tollway.gateway.tenancy.actions import Actions

    store, other = SqliteStore(str(tmp_path / "t.db")), SqliteStore(str(tmp_path / "t.db"))
    await store.open()
    await other.open()
    try:
        actions, elsewhere = Actions(store, CONFIG), Actions(other, CONFIG)
        await actions.create_team(OWNER, TeamCreate(name="red"))
        read = store.team

        async def read_then_deleted(name: str) -> ApiTeam | None:
            held = await read(name)
            await elsewhere.delete_team(OWNER, name)  # (no key in it yet: allowed)
            return held
        store.team = read_then_deleted  # type: ignore[method-assign]
        with pytest.raises(GatewayError) as caught:
            await actions.create_key(OWNER, KeyCreate(name="svc", team="red"))
        assert caught.value.status == 409 and "team 'red'" in caught.value.message
        assert [k for k in (await other.changes(0)).keys if k.team == "red"] == []
    finally:
        await store.aclose()
        await other.aclose()


async def _until(check, timeout: float = 3.0) -> None:
    import asyncio
    import time
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)

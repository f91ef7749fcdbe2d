"""Run-time keys, teams and the audit trail in PostgreSQL: the SQL `PostgresStore`'s KeyStore
methods run on a pooled connection, and the LISTEN connection that tells a process another
one saved a change (tollway.gateway.store.postgres).

The tables are made by migration 2 of `tollway.gateway.store.postgres.MIGRATIONS`.

A save first bumps the one row of `key_version`: that row's lock makes saves take turns, and
each checks its expectations only once it holds the lock, in a statement that (READ
COMMITTED) sees what the save before it committed. Two saves expecting one version of one
record cannot both pass, and versions commit in order.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

import asyncpg

from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change, Snapshot
from tollway.gateway.store.key_rows import (
    audit_of,
    check,
    clash,
    deleted_teams,
    expectations,
    key_of,
    stamp,
    team_in_use,
    team_of,
)
from tollway.gateway.store.pg_conn import Conn, ListenConn

CHANNEL = "tollway_keys"
_HASH_CONSTRAINT = "api_keys_key_hash"  # (migration 2 names it; the name index is api_keys_name)

_UPSERT_KEY = """INSERT INTO api_keys (id, name, team, key_hash, revoked, version, doc) VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, team = excluded.team, key_hash = excluded.key_hash,
    revoked = excluded.revoked, version = excluded.version, doc = excluded.doc"""  # last_used_at is touch's alone
_UPSERT_TEAM = """INSERT INTO api_teams (name, version, doc) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO UPDATE SET version = excluded.version, doc = excluded.doc"""
_INSERT_AUDIT = "INSERT INTO admin_audit (ts, team, doc) VALUES ($1, $2, $3)"
_VERSION_OF = {"key": "SELECT version FROM api_keys WHERE id = $1", "team": "SELECT version FROM api_teams WHERE name = $1"}
_LIVE_IN_TEAM = "SELECT count(*) FROM api_keys WHERE team = $1 AND NOT revoked"
# Rows locked in id order first: two replicas touching overlapping keys never deadlock.
_LOCK_TOUCHED = "SELECT 1 FROM api_keys WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
_TOUCH = """UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, u.ts)
    FROM unnest($1::text[], $2::float8[]) AS u(id, ts) WHERE k.id = u.id"""


async def save(conn: Conn, change: Change) -> int:
    wanted = expectations(change.expect)
    async with conn.transaction():
        version = int(await conn.fetchval("UPDATE key_version SET version = version + 1 RETURNING version"))
        for expected in wanted:
            check(expected, await conn.fetchval(_VERSION_OF[expected.kind], expected.ident))
        stamped = stamp(change, version)
        for key, columns in stamped.keys:
            try:
                await conn.execute(_UPSERT_KEY, *columns)
            except asyncpg.UniqueViolationError as exc:  # the transaction is rolled back as the Conflict leaves it
                raise clash(key, exc.constraint_name == _HASH_CONSTRAINT) from None
        for team in deleted_teams(change):  # (after the change's own keys: it may move them out first)
            live = int(await conn.fetchval(_LIVE_IN_TEAM, team))
            if live:
                raise team_in_use(team, live)
        for team_columns in stamped.teams:
            await conn.execute(_UPSERT_TEAM, *team_columns)
        for audit_columns in stamped.audit:
            await conn.execute(_INSERT_AUDIT, *audit_columns)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(version))  # delivered on commit, if any
    return version


async def touch(conn: Conn, used: dict[str, float]) -> None:
    if not used:
        return
    ids = sorted(used)
    async with conn.transaction():
        await conn.execute(_LOCK_TOUCHED, ids)
        await conn.execute(_TOUCH, ids, [used[i] for i in ids])


async def key_version(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT version FROM key_version"))


async def changes(conn: Conn, since: int) -> Snapshot:
    # One snapshot for the three reads: the version and the rows of one moment.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await key_version(conn)
        keys = await conn.fetch("SELECT doc FROM api_keys WHERE version > $1 ORDER BY version, id", since)
        teams = await conn.fetch("SELECT doc FROM api_teams WHERE version > $1 ORDER BY version, name", since)
    return Snapshot(version, [key_of(r[0]) for r in keys], [team_of(r[0]) for r in teams])


async def key(conn: Conn, key_id: str) -> ApiKey | None:
    doc = await conn.fetchval("SELECT doc FROM api_keys WHERE id = $1", key_id)
    return None if doc is None else key_of(doc)


async def team(conn: Conn, name: str) -> ApiTeam | None:
    doc = await conn.fetchval("SELECT doc FROM api_teams WHERE name = $1", name)
    return None if doc is None else team_of(doc)


async def audit(conn: Conn, since: float | None, limit: int, team: str | None) -> list[AuditEntry]:
    # NULL parameters switch a filter off: one statement text, whichever filters are given.
    rows = await conn.fetch("""SELECT doc FROM admin_audit WHERE ($1::float8 IS NULL OR ts >= $1)
        AND ($2::text IS NULL OR team = $2) ORDER BY ts DESC, seq DESC LIMIT $3""", since, team, limit)
    return [audit_of(r[0]) for r in rows]


async def last_used(conn: Conn, key_ids: Sequence[str]) -> dict[str, float]:
    if not key_ids:
        return {}
    rows = await conn.fetch("SELECT id, last_used_at FROM api_keys WHERE id = ANY($1::text[]) "
                            "AND last_used_at IS NOT NULL", list(key_ids))
    return {r[0]: r[1] for r in rows}


class Listener:
    """The LISTEN connection of one store, made on the first `listen` and closed with the store.

    If the server drops it, it is forgotten (no reconnect: the gateway polls `key_version`
    as well, and a later `listen` makes a new one); nothing raises later and nothing is left
    open."""

    def __init__(self) -> None:
        self._conn: ListenConn | None = None
        self._callbacks: list[Callable[[], None]] = []
        # Held while connecting and closing: two listens at once make one connection, and a
        # close during a listen's connect closes what that connect made.
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def add(self, url: str, on_change: Callable[[], None], timeout: float) -> None:
        """Call `on_change` on each notification; raises what asyncpg raises when it cannot connect."""
        async with self._lock:
            if not self.listening:
                self._conn, self._callbacks = None, []
                conn = cast(ListenConn, await asyncpg.connect(
                    url, timeout=timeout, command_timeout=timeout,
                    server_settings={"application_name": "tollway-listen"}))
                try:
                    conn.add_termination_listener(self._lost)
                    await conn.add_listener(CHANNEL, self._notified)
                except BaseException:
                    conn.terminate()
                    raise
                self._conn = conn
            self._callbacks.append(on_change)

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        for callback in list(self._callbacks):
            callback()

    def _lost(self, conn: object) -> None:
        if conn is self._conn:  # dropped (or closed by close(), which forgot it first)
            self._conn, self._callbacks = None, []

    async def close(self, timeout: float) -> None:
        async with self._lock:
            conn, self._conn, self._callbacks = self._conn, None, []
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()

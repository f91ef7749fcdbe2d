"""Run-time keys, teams and the audit trail in SQLite: the SQL `SqliteStore`'s KeyStore methods
run, writes on its writer thread, reads on its reader (tollway.gateway.store.sqlite).

The tables are made by migration 2 of `tollway.gateway.store.sqlite.MIGRATIONS`.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

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

_UPSERT_KEY = """INSERT INTO api_keys (id, name, team, key_hash, revoked, version, doc) VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, team = excluded.team, key_hash = excluded.key_hash,
    revoked = excluded.revoked, version = excluded.version, doc = excluded.doc"""  # last_used_at is touch's alone
_UPSERT_TEAM = """INSERT INTO api_teams (name, version, doc) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET version = excluded.version, doc = excluded.doc"""
_INSERT_AUDIT = "INSERT INTO admin_audit (ts, team, doc) VALUES (?, ?, ?)"
_VERSION_OF = {"key": "SELECT version FROM api_keys WHERE id = ?", "team": "SELECT version FROM api_teams WHERE name = ?"}
_LIVE_IN_TEAM = "SELECT count(*) FROM api_keys WHERE team = ? AND revoked = 0"
_TOUCH = "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)"
# A list of ids as one JSON parameter: no limit on how many, one statement.
_LAST_USED = ("SELECT id, last_used_at FROM api_keys WHERE id IN (SELECT value FROM json_each(?)) "
              "AND last_used_at IS NOT NULL")


def save(db: sqlite3.Connection, change: Change) -> int:
    wanted = expectations(change.expect)
    # IMMEDIATE takes the write lock before the checks: another process's save waits (busy
    # timeout) and then checks against what this one wrote, so two cannot both pass.
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("UPDATE key_version SET version = version + 1")
        version: int = db.execute("SELECT version FROM key_version").fetchone()[0]
        for expected in wanted:
            row = db.execute(_VERSION_OF[expected.kind], (expected.ident,)).fetchone()
            check(expected, None if row is None else row[0])
        stamped = stamp(change, version)
        for key, columns in stamped.keys:
            try:
                db.execute(_UPSERT_KEY, columns)
            except sqlite3.IntegrityError as exc:  # "UNIQUE constraint failed: api_keys.name" (or .key_hash)
                raise clash(key, "key_hash" in str(exc)) from None
        for team in deleted_teams(change):  # (after the change's own keys: it may move them out first)
            live: int = db.execute(_LIVE_IN_TEAM, (team,)).fetchone()[0]
            if live:
                raise team_in_use(team, live)
        db.executemany(_UPSERT_TEAM, stamped.teams)
        db.executemany(_INSERT_AUDIT, stamped.audit)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return version


def touch(db: sqlite3.Connection, used: dict[str, float]) -> None:
    if not used:
        return
    db.execute("BEGIN IMMEDIATE")  # one transaction for the batch (and no read-to-write upgrade to fail)
    try:
        db.executemany(_TOUCH, [(ts, key_id, ts) for key_id, ts in sorted(used.items())])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def key_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("SELECT version FROM key_version").fetchone()[0]
    return version


def changes(db: sqlite3.Connection, since: int) -> Snapshot:
    db.execute("BEGIN")  # one read transaction: the version and the rows of one moment
    try:
        version = key_version(db)
        keys = [key_of(r[0]) for r in db.execute("SELECT doc FROM api_keys WHERE version > ? ORDER BY version, id",
                                                 (since,))]
        teams = [team_of(r[0]) for r in db.execute("SELECT doc FROM api_teams WHERE version > ? ORDER BY version, name",
                                                   (since,))]
    finally:
        db.execute("COMMIT")
    return Snapshot(version, keys, teams)


def key(db: sqlite3.Connection, key_id: str) -> ApiKey | None:
    row = db.execute("SELECT doc FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else key_of(row[0])


def team(db: sqlite3.Connection, name: str) -> ApiTeam | None:
    row = db.execute("SELECT doc FROM api_teams WHERE name = ?", (name,)).fetchone()
    return None if row is None else team_of(row[0])


def audit(db: sqlite3.Connection, since: float | None, limit: int, team: str | None) -> list[AuditEntry]:
    where: list[str] = []
    args: list[object] = []
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if team is not None:
        where.append("team = ?")
        args.append(team)
    sql = "SELECT doc FROM admin_audit" + (" WHERE " + " AND ".join(where) if where else "")
    args.append(limit)
    return [audit_of(r[0]) for r in db.execute(sql + " ORDER BY ts DESC, seq DESC LIMIT ?", args)]


def last_used(db: sqlite3.Connection, key_ids: Sequence[str]) -> dict[str, float]:
    if not key_ids:
        return {}
    return {r[0]: r[1] for r in db.execute(_LAST_USED, (json.dumps(list(key_ids)),))}

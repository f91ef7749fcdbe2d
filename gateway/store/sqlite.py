"""The ledger in SQLite: one file, the embedded default for a single gateway process.

sqlite3 blocks, so every call runs on one thread of the store's own (one connection, used
by one thread at a time, is how SQLite wants it); the event loop only awaits its results.
WAL journaling lets reports read while the writer writes, and lets the workers of one
`--workers N` gateway share the file (each waits up to `_BUSY_MS` for the others' writes).
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import msgspec
from msgspec.structs import astuple

from tollway.core.kernels import RowWriter
from tollway.core.ledger.periods import DAY, Table
from tollway.core.ledger.record import FIELDS, UsageRecord
from tollway.core.ledger.report import Group, SpendQuery
from tollway.core.ledger.rollup import SUMS, rollups_of_rows
from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change, Snapshot
from tollway.gateway.lifecycle.threads import named
from tollway.gateway.store import KeyStore, LedgerStore, RequestFilter, StoreError, schema_too_new
from tollway.gateway.store import sqlite_keys as keys
from tollway.gateway.store.rows import (
    grouped_select,
    request_filters,
    rollup_rows,
    rollup_select,
    spend_parts,
    spend_rows,
)

T = TypeVar("T")
_BUSY_MS = 5000
_PRUNE_BATCH = 5000  # rows per DELETE: short transactions, so the writer never waits long
_PRUNE_ROUNDS = 40  # DELETEs a prune call makes at most (200k rows): a backlog goes in hourly steps

_ROLLUP_COLUMNS = """bucket INTEGER NOT NULL, key TEXT NOT NULL, key_id TEXT NOT NULL, team TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
    unpriced_requests INTEGER NOT NULL, input_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, PRIMARY KEY (bucket, key, key_id, team, model, provider)"""

# Versioned migrations: MIGRATIONS[i] takes the schema from version i to i + 1. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE usage_records (ts REAL NOT NULL, request_id TEXT NOT NULL, key TEXT, key_id TEXT,
            team TEXT, model TEXT, provider TEXT, upstream_model TEXT, api TEXT NOT NULL, status INTEGER NOT NULL,
            error TEXT, stream INTEGER NOT NULL, input_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
            cost_usd REAL, latency_ms REAL NOT NULL, ttft_ms REAL, attempts INTEGER NOT NULL,
            cache_hit INTEGER NOT NULL, tags TEXT, trace_id TEXT)""",
        "CREATE INDEX usage_records_ts ON usage_records (ts)",
        "CREATE INDEX usage_records_key_ts ON usage_records (key, ts)",
        f"CREATE TABLE usage_hourly ({_ROLLUP_COLUMNS}) WITHOUT ROWID",
        f"CREATE TABLE usage_daily ({_ROLLUP_COLUMNS}) WITHOUT ROWID",
    ),
    (  # 2: run-time keys and teams (each a whole msgspec JSON doc, a few fields mirrored), the audit trail
        """CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, team TEXT, key_hash TEXT NOT NULL UNIQUE,
            revoked INTEGER NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL, last_used_at REAL)""",
        "CREATE UNIQUE INDEX api_keys_name ON api_keys (name)",  # a name is never reused: the ledger and budgets count by it
        "CREATE INDEX api_keys_version ON api_keys (version)",
        "CREATE TABLE api_teams (name TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL)",
        "CREATE INDEX api_teams_version ON api_teams (version)",
        """CREATE TABLE admin_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, team TEXT,
            doc TEXT NOT NULL)""",
        "CREATE INDEX admin_audit_ts ON admin_audit (ts)",
        "CREATE TABLE key_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
        "INSERT INTO key_version (id, version) VALUES (1, 0)",
    ),
    (  # 3: guardrail findings per request, JSON ({guardrail: {detector: count}}), NULL when none
        "ALTER TABLE usage_records ADD COLUMN guardrails TEXT",
    ),
)
VERSION = len(MIGRATIONS)

# A record's row: its fields in FIELDS order (tests pin it), bound by the row writer
# (tollway.core.kernels.RowWriter: values bound in C where the kernel is built) as they are,
# but for `tags` (a tuple of str: joined by commas, never holding one; none: NULL) and
# `guardrails` (findings: JSON), which `_encode_value` makes text of.
_INSERT_HEAD = f"INSERT INTO usage_records ({', '.join(FIELDS)}) VALUES "
_ROW = "(" + ", ".join("?" * len(FIELDS)) + ")"
_SUM_SET = ", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS)
_UPSERT_HEAD = "INSERT INTO {table} (bucket, key, key_id, team, model, provider, " + ", ".join(SUMS) + ") VALUES "
_UPSERT_ROW = "(" + ", ".join("?" * (6 + len(SUMS))) + ")"
_UPSERT_TAIL = " ON CONFLICT (bucket, key, key_id, team, model, provider) DO UPDATE SET " + _SUM_SET

# The sums over raw records, in SUMS order; and a dimension's expression there.
_RAW_SUMS = ("COUNT(*), SUM(status >= 400 OR error IS NOT NULL), SUM(cost_usd IS NULL), SUM(input_tokens), "
             "SUM(cached_input_tokens), SUM(cache_write_tokens), SUM(output_tokens), SUM(reasoning_tokens), "
             "TOTAL(cost_usd)")
_RAW_DIM = {"key": "r.key", "team": "r.team", "model": "r.model", "provider": "r.provider",
            "day": f"CAST(r.ts / {DAY:.0f} AS INTEGER) * {DAY:.0f}", "tag": "tag.value"}
# Each record once per tag (a record without tags once, under tag null): tags never hold a
# comma or a quote (tollway.core.ledger.tags), so the list is a JSON array by substitution.
_TAGS = """json_each(CASE WHEN r.tags IS NULL THEN '[null]' ELSE '["' || REPLACE(r.tags, ',', '","') || '"]' END) AS tag"""


_encode = msgspec.json.Encoder().encode
_decode_guardrails = msgspec.json.Decoder(dict[str, dict[str, int]]).decode


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        # Where its connections open it: the file, or for ":memory:" one in-memory database
        # their own, shared by the three (each connection to ":memory:" would get an empty one)
        self._target = f"file:tollway-ledger-{id(self):x}?mode=memory&cache=shared" if path == ":memory:" else path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollway-sqlite",
                                          initializer=named("tollway-sqlite"))
        # Reports read on a connection and thread of their own: a long report must not hold up
        # the writer (WAL lets a reader and a writer work at once).
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollway-sqlite-read",
                                          initializer=named("tollway-sqlread"))
        self._db: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self._rows: RowWriter | None = None  # the ledger's batches: a connection of their own, on the same thread
        self._closed = False

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, fn, False)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._call, fn, True)

    def _check_open(self) -> None:
        """After aclose the threads are shut down: a call says so as a StoreError, not the
        executor's RuntimeError."""
        if self._closed:
            raise StoreError("the SQLite ledger is not open")

    def _call(self, fn: Callable[[sqlite3.Connection], T], reading: bool) -> T:
        db = self._rdb if reading else self._db
        if db is None:
            raise StoreError("the SQLite ledger is not open")
        try:
            return fn(db)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite ({self.path}): {exc}") from None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    def _open(self) -> None:
        if self._db is not None:  # opened already (an open the start gave up waiting for, finished later)
            return
        # The workers of `--workers N` open one new file at once: SQLite answers one of two
        # connections that would wait on each other (both turning the file to WAL, or migrating)
        # "database is locked" at once, without its busy wait. Such an open is tried again, for
        # up to the busy time, instead of leaving that worker without its store.
        deadline = time.monotonic() + _BUSY_MS / 1000
        pause = 0.01
        while True:
            try:
                self._db, self._rdb, self._rows = self._connections()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise StoreError(f"cannot open the SQLite ledger at {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the SQLite ledger at {self.path}: {exc}") from None
            time.sleep(pause)  # (the store's own thread)
            pause = min(pause * 2, 0.25)

    def _connections(self) -> tuple[sqlite3.Connection, sqlite3.Connection, RowWriter]:
        """The schema's (migrated), the reports' and the row writer's connections, or none."""
        opened: list[sqlite3.Connection | RowWriter] = []  # closed again if a later step fails
        try:
            db = _connect(self._target)
            opened.append(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            _migrate(db)
            rows = RowWriter(self._target, _BUSY_MS)
            opened.append(rows)
            reader = _connect(self._target)
            opened.append(reader)
            reader.execute("PRAGMA query_only=ON")
            reader.execute("PRAGMA read_uncommitted=ON")  # (only a shared in-memory one: no table locks for reports)
        except BaseException:
            for connection in opened:
                connection.close()
            raise
        return db, reader, rows

    async def write(self, records: Sequence[UsageRecord]) -> None:
        await self._run(lambda _: _write(self._writer(), records))  # rows and rollups made there too: off the loop

    def _writer(self) -> RowWriter:
        if self._rows is None:
            raise StoreError("the SQLite ledger is not open")
        return self._rows

    async def spend(self, query: SpendQuery) -> list[tuple[Group, list[float]]]:
        return await self._read(lambda db: _spend(db, query))

    async def requests(self, where: RequestFilter) -> list[UsageRecord]:
        return await self._read(lambda db: _requests(db, where))

    async def prune(self, before: float) -> int:
        """At most _PRUNE_ROUNDS batches a call (the writer calls it hourly; a backlog goes in
        steps): each DELETE is a short transaction other processes' writers slip between, and
        this one's records wait at most that long."""
        removed = 0
        for _ in range(_PRUNE_ROUNDS):
            n = await self._run(lambda db: db.execute(
                "DELETE FROM usage_records WHERE rowid IN (SELECT rowid FROM usage_records WHERE ts < ? LIMIT ?)",
                (before, _PRUNE_BATCH)).rowcount)
            removed += n
            if n < _PRUNE_BATCH:
                break
        return removed

    # -- run-time keys, teams, the audit trail (KeyStore; the SQL is in sqlite_keys) ----------

    async def key_version(self) -> int:
        return await self._read(keys.key_version)

    async def changes(self, since: int) -> Snapshot:
        return await self._read(lambda db: keys.changes(db, since))

    async def key(self, key_id: str) -> ApiKey | None:
        return await self._read(lambda db: keys.key(db, key_id))

    async def team(self, name: str) -> ApiTeam | None:
        return await self._read(lambda db: keys.team(db, name))

    async def save(self, change: Change) -> int:
        return await self._run(lambda db: keys.save(db, change))

    async def audit(self, since: float | None, limit: int, team: str | None = None) -> list[AuditEntry]:
        return await self._read(lambda db: keys.audit(db, since, limit, team))

    async def touch(self, used: dict[str, float]) -> None:
        await self._run(lambda db: keys.touch(db, dict(used)))

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        return await self._read(lambda db: keys.last_used(db, list(key_ids)))

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """SQLite cannot tell one process of another's writes: the caller polls `key_version`."""
        return False

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = True
        db, self._db = self._db, None
        reader, self._rdb = self._rdb, None
        rows, self._rows = self._rows, None
        if rows is not None:
            await loop.run_in_executor(self._thread, rows.close)
        if db is not None:
            await loop.run_in_executor(self._thread, db.close)
        if reader is not None:
            await loop.run_in_executor(self._reader, reader.close)
        self._thread.shutdown(wait=False)
        self._reader.shutdown(wait=False)



if TYPE_CHECKING:  # mypy holds the class to both protocols
    def _conforms(store: SqliteStore) -> tuple[LedgerStore, KeyStore]:
        return store, store

def _connect(target: str) -> sqlite3.Connection:
    return sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=_BUSY_MS / 1000,
                           uri=target.startswith("file:"))


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")  # one migrator at a time, also across processes
    try:
        db.execute("CREATE TABLE IF NOT EXISTS tollway_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM tollway_schema").fetchone()
        found = row[0] if row else 0
        if found > VERSION:
            raise schema_too_new(found, VERSION)
        for statements in MIGRATIONS[found:]:
            for sql in statements:
                db.execute(sql)
        if row is None:
            db.execute("INSERT INTO tollway_schema (version) VALUES (?)", (VERSION,))
        else:
            db.execute("UPDATE tollway_schema SET version = ?", (VERSION,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _encode_value(value: object) -> str | None:
    """A record's value the row writer cannot bind as it is: its tags, its guardrail findings."""
    if isinstance(value, tuple):
        return ",".join(value) or None
    return _encode(value).decode() if value else None  # (no findings: NULL, as when there were none)


# Rows a batch writes between yields of the core. The writer's thread shares the gateway's
# core(s): a 200-record batch is ~1 ms of CPU (more on a busy machine), and a request that
# arrived meanwhile waited for the burst to end whatever the thread's priority or the GIL's
# switch interval (neither moved it: bench/README.md, "The c=1 p99 with the SQLite ledger").
# sched_yield between 32-row statements (~0.1 ms each) lets it in: c=1 p99 2.97 -> 1.79 ms
# against 1.44 without a ledger, c=32 throughput unchanged. Free when nothing else is ready.
# The row writer yields inside its call, without the GIL (one slice per call, as at first,
# took the GIL back after each: ~15% more of the writer's CPU per record under load).
_SLICE_RECORDS = 32


def _write(rows: RowWriter, records: Sequence[UsageRecord]) -> None:
    """One batch in one transaction: its rows in statements of _SLICE_RECORDS with the core
    handed over before each (see _SLICE_RECORDS), then its hourly and daily rollups."""
    values = list(map(astuple, records))  # (once: the rows and the rollups read the same tuples)
    hour_sums, day_sums = rollups_of_rows(values)
    rows.execute("BEGIN")
    try:
        rows.insert(_INSERT_HEAD, _ROW, "", values, _encode_value, yield_every=_SLICE_RECORDS)
        for table, sums in (("usage_hourly", hour_sums), ("usage_daily", day_sums)):
            rows.insert(_UPSERT_HEAD.format(table=table), _UPSERT_ROW, _UPSERT_TAIL, rollup_rows(sums))
        rows.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # (SQLite may have rolled it back itself: the first error is the one)
            rows.execute("ROLLBACK")
        raise


def _spend(db: sqlite3.Connection, query: SpendQuery) -> list[tuple[Group, list[float]]]:
    out: list[tuple[Group, list[float]]] = []
    for table, lo, hi in spend_parts(query):
        out.extend(spend_rows(db.execute(*_segment_sql(table, query.group_by, lo, hi)), len(query.group_by)))
    return out


def _segment_sql(table: Table, dims: tuple[str, ...], lo: float, hi: float) -> tuple[str, tuple[float, float]]:
    if table != "raw":
        return rollup_select(table, dims, "?", "?"), (lo, hi)
    cols = [_RAW_DIM[d] for d in dims]
    source = "usage_records AS r" + (", " + _TAGS if "tag" in dims else "")
    return grouped_select(cols, _RAW_SUMS, source, "r.ts >= ? AND r.ts < ?"), (lo, hi)


def _requests(db: sqlite3.Connection, where: RequestFilter) -> list[UsageRecord]:
    filters = request_filters(where)
    args: list[object] = [value for _, _, value in filters]
    sql = f"SELECT {', '.join(FIELDS)} FROM usage_records"
    if filters:
        sql += " WHERE " + " AND ".join(f"{column} {op} ?" for column, op, _ in filters)
    sql += " ORDER BY ts DESC LIMIT ?"
    args.append(where.limit)
    return [_record(row) for row in db.execute(sql, args)]


def _guardrails(stored: object) -> dict[str, dict[str, int]] | None:
    return _decode_guardrails(str(stored)) if stored else None


def _record(row: tuple[object, ...]) -> UsageRecord:
    values = dict(zip(FIELDS, row, strict=True))
    tags = values["tags"]
    values["tags"] = tuple(str(tags).split(",")) if tags else ()
    values["stream"], values["cache_hit"] = bool(values["stream"]), bool(values["cache_hit"])
    values["guardrails"] = _guardrails(values["guardrails"])
    return UsageRecord(**values)  # type: ignore[arg-type]

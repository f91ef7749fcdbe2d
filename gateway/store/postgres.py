"""The ledger in PostgreSQL: one database shared by a gateway's workers and by its replicas.

asyncpg, a small pool (`_POOL_MIN`..`_POOL_MAX` connections) with short timeouts: a dead
database fails a call within seconds (the Ledger's writer keeps the records and retries), it
never holds the gateway up.

Raw records go to `usage_records`, partitioned by range on `ts` with one partition per UTC day
(`usage_records_YYYYMMDD`). Retention drops whole partitions: a DROP TABLE is instant and
leaves no dead rows to vacuum, where a DELETE of a day's millions of rows would bloat the
table and its indexes. Partitions are made ahead (today and the next `_AHEAD` days) and on
demand for a batch that holds a day without one. The hourly and daily rollups are ordinary
tables, kept forever, written in the same transaction as the records they sum.

Bytes per raw row are kept low (bench/README.md, "Ledger stores", has the measure) by the
column types and the order of the columns (fixed-width ones first, widest first, so no
alignment padding): smallint status and attempts, int4 token counts (one request's tokens fit
with room), float4 latencies (7 significant digits: a microsecond below 8 s, the recorder's
rounding), float8 cost (NULL when unpriced), booleans, text[] tags (NULL when none).

Indexes, per partition: a B-tree on `ts`, for `/admin/requests` newest first (unfiltered, or by
team, model or status) and for a report's raw edges (at most two partial hours); and one on
(key, ts) for `/admin/requests?key=`. A BRIN index in its place would save its ~22 B a row,
but it cannot give rows in order: the newest 100 of all records then sort every partition
(0.5 s over 3 million rows, measured), where the B-tree reads 100 index entries.
"""
from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncpg
import msgspec

from tollway.core.ledger.periods import DAY, HOUR, Table
from tollway.core.ledger.record import FIELDS, UsageRecord, to_the_microsecond
from tollway.core.ledger.report import Group, SpendQuery
from tollway.core.ledger.rollup import SUMS
from tollway.core.security.urls import redact_url, url_passwords
from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change, Snapshot
from tollway.gateway.store import KeyStore, LedgerStore, Refused, RequestFilter, StoreError, schema_too_new
from tollway.gateway.store import postgres_keys as keys
from tollway.gateway.store.pg_conn import Conn, Row
from tollway.gateway.store.rows import (
    Cell,
    grouped_select,
    request_filters,
    rollup_select,
    spend_parts,
    spend_rows,
)

T = TypeVar("T")
# A value asyncpg cannot encode for its column (client side; asyncpg.DataError is the server's):
# the record's fault, not the database's, as the server's data errors are.
_ClientDataError = asyncpg.exceptions._base.DataError
# What asyncpg raises when the database or the connection fails (as opposed to a bug here).
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError,
             TimeoutError)


_POOL_MIN, _POOL_MAX = 1, 4
_CONNECT_TIMEOUT = 5.0  # seconds to open a connection: a dead database fails fast
_COMMAND_TIMEOUT = 10.0  # seconds per statement
_MIGRATE_TIMEOUT = 600.0  # seconds per migration statement, and to wait for another gateway's migration
# DDL (making a partition, dropping one) locks usage_records whole: behind a long report it would
# hold every writer up, so it waits at most this long for its lock and fails (to be retried).
_LOCK_TIMEOUT = "3s"
# Seconds a dropped partition's rows are counted for (the count is only what the prune reports):
# a busy day holds tens of millions of rows, whose count could outlast the statement timeout
# every hour, and retention would then never drop anything. Past it, the planner's estimate.
_COUNT_TIMEOUT = 2.0
_AHEAD = 2  # days of partitions made ahead of today
# Advisory lock ids (pg_advisory_xact_lock): one migrator at a time, one partition maker at a time.
_MIGRATE_LOCK = zlib.crc32(b"tollway:migrate")
_PARTITION_LOCK = zlib.crc32(b"tollway:partition")

_ROLLUP = """CREATE TABLE {table} (bucket bigint NOT NULL, key text NOT NULL, key_id text NOT NULL,
    team text NOT NULL, model text NOT NULL, provider text NOT NULL, requests bigint NOT NULL,
    errors bigint NOT NULL, unpriced_requests bigint NOT NULL, input_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL, cache_write_tokens bigint NOT NULL, output_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL, cost_usd float8 NOT NULL,
    PRIMARY KEY (bucket, key, key_id, team, model, provider))"""

# Versioned migrations: MIGRATIONS[i] takes the schema from version i to i + 1. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE usage_records (ts timestamptz NOT NULL, cost_usd float8, input_tokens int4 NOT NULL,
            cached_input_tokens int4 NOT NULL, cache_write_tokens int4 NOT NULL, output_tokens int4 NOT NULL,
            reasoning_tokens int4 NOT NULL, latency_ms float4 NOT NULL, ttft_ms float4, status int2 NOT NULL,
            attempts int2 NOT NULL, stream boolean NOT NULL, cache_hit boolean NOT NULL, request_id text NOT NULL,
            key text, key_id text, team text, model text, provider text, upstream_model text, api text NOT NULL,
            error text, tags text[], trace_id text) PARTITION BY RANGE (ts)""",
        "CREATE INDEX usage_records_ts ON usage_records (ts)",
        "CREATE INDEX usage_records_key_ts ON usage_records (key, ts)",
        _ROLLUP.format(table="usage_hourly"),
        _ROLLUP.format(table="usage_daily"),
    ),
    (  # 2: run-time keys and teams (each a whole msgspec JSON doc, a few fields mirrored), the audit trail.
        # Docs are text, not jsonb: they read back byte for byte, and jsonb refuses a string's \u0000.
        """CREATE TABLE api_keys (id text PRIMARY KEY, name text NOT NULL, team text, key_hash text NOT NULL,
            revoked boolean NOT NULL, version bigint NOT NULL, doc text NOT NULL, last_used_at float8,
            CONSTRAINT api_keys_key_hash UNIQUE (key_hash))""",
        "CREATE UNIQUE INDEX api_keys_name ON api_keys (name)",  # a name is never reused: the ledger and budgets count by it
        "CREATE INDEX api_keys_version ON api_keys (version)",
        "CREATE TABLE api_teams (name text PRIMARY KEY, version bigint NOT NULL, doc text NOT NULL)",
        "CREATE INDEX api_teams_version ON api_teams (version)",
        """CREATE TABLE admin_audit (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts float8 NOT NULL,
            team text, doc text NOT NULL)""",
        "CREATE INDEX admin_audit_ts ON admin_audit (ts)",
        "CREATE TABLE key_version (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL)",
        "INSERT INTO key_version (id, version) VALUES (1, 0)",
    ),
    (  # 3: guardrail findings per request ({guardrail: {detector: count}}), NULL when none
        "ALTER TABLE usage_records ADD COLUMN guardrails jsonb",
    ),
)
VERSION = len(MIGRATIONS)

_TS = attrgetter("ts")
_IDENT = ("bucket", "key", "key_id", "team", "model", "provider")
_SET_SUMS = ", ".join(f"{x} = t.{x} + excluded.{x}" for x in SUMS)
_BY_IDENT = ", ".join(str(i + 1) for i in range(len(_IDENT)))

_RAW_SUMS = ("count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL), count(*) FILTER (WHERE cost_usd IS "
             "NULL), sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), sum(output_tokens), "
             "sum(reasoning_tokens), coalesce(sum(cost_usd), 0)")
_RAW_DIM = {"key": "key", "team": "team", "model": "model", "provider": "provider",
            "day": f"floor(extract(epoch FROM ts) / {DAY:.0f})::int8 * {DAY:.0f}", "tag": "tag"}
_PARTITIONS = """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'usage_records'::regclass"""


class PostgresStore:
    backend = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redact(url)  # what messages may say of the database
        self._pool: Any = None  # asyncpg.Pool (asyncpg has no type hints)
        self._days: set[date] = set()  # the days that have a partition, as far as this store knows
        self._listener = keys.Listener()

    # -- connecting and migrating -------------------------------------------------------

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=_POOL_MIN, max_size=_POOL_MAX, timeout=_CONNECT_TIMEOUT,
                command_timeout=_COMMAND_TIMEOUT,
                server_settings={"application_name": "tollway", "jit": "off"})
        except Exception as exc:  # asyncpg raises OSError, its own errors, timeouts, and ValueError for a bad URL
            raise StoreError(f"cannot connect to the PostgreSQL ledger at {self.where}: {self._say(exc)}") from None
        self._pool = pool
        try:
            await self._call(self._migrate)
            await self._call(lambda conn: self._ensure_days(conn, _today_and_ahead()))
        except BaseException:
            await self.aclose()
            raise

    async def _migrate(self, conn: Conn) -> None:
        async with conn.transaction():
            # Several gateways starting at once: one migrates, the others wait for it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK, timeout=_MIGRATE_TIMEOUT)
            await conn.execute("CREATE TABLE IF NOT EXISTS tollway_schema (version integer NOT NULL)")
            found = await conn.fetchval("SELECT version FROM tollway_schema")
            if found is not None and found > VERSION:
                raise schema_too_new(found, VERSION)
            for statements in MIGRATIONS[found or 0:]:
                for sql in statements:
                    await conn.execute(sql, timeout=_MIGRATE_TIMEOUT)
            if found is None:
                await conn.execute("INSERT INTO tollway_schema (version) VALUES ($1)", VERSION)
            elif found < VERSION:
                await conn.execute("UPDATE tollway_schema SET version = $1", VERSION)

    async def _call(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `fn` with a pooled connection; what fails becomes a StoreError."""
        if self._pool is None:
            raise StoreError("the PostgreSQL ledger is not open")
        try:
            async with self._pool.acquire(timeout=_CONNECT_TIMEOUT) as conn:
                return await fn(conn)
        except StoreError:
            raise
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, _ClientDataError) as exc:  # the data
            raise Refused(f"PostgreSQL ({self.where}): {self._say(exc)}") from None
        except _FAILURES as exc:
            raise StoreError(f"PostgreSQL ({self.where}): {self._say(exc)}") from None

    def _say(self, exc: BaseException) -> str:
        """The error's message, without the URL's password should a driver ever echo it. A URL
        asyncpg cannot parse (a ValueError, before any connection exists) is named, never
        quoted: its message quotes the fragment it choked on, which for a password holding an
        unescaped / ? or # is part of the password, where no scrubbing can recognise it."""
        if isinstance(exc, ValueError) and not isinstance(exc, asyncpg.InterfaceError):  # (a value it cannot send is both)
            return f"store.url is not a valid PostgreSQL URL ({type(exc).__name__})"
        text = (str(exc) or type(exc).__name__).replace(self.url, self.where)
        for password in sorted(_passwords(self.url), key=len, reverse=True):
            text = text.replace(password, "***")
        return text

    # -- partitions ---------------------------------------------------------------------

    async def _ensure_days(self, conn: Conn, days: set[date]) -> None:
        """Make the partitions of `days` that do not exist yet."""
        if not self._days:
            self._days = await _partitions(conn)
        missing = days - self._days
        if not missing:
            return
        async with conn.transaction():
            # One maker at a time, across replicas: two concurrent CREATE TABLE IF NOT EXISTS of one
            # name can both pass the check and one then fails on the catalog's unique index.
            await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            for day in sorted(missing):
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {_partition(day)} PARTITION OF usage_records FOR VALUES FROM "
                    f"('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')")
        self._days |= missing

    # -- writing ------------------------------------------------------------------------

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        batch = to_the_microsecond(records)
        try:
            await self._write_batch(batch)
        except Refused:
            # Most often a value the columns cannot hold: a NUL in a client's model name, an
            # upstream's count past int4. Such records go in as _fit makes them; checking each
            # record up front instead cost the loop ~4k instructions a record (a sixth of the
            # store's work), for what almost never happens.
            fitted = [_fit(r) for r in batch]
            if all(f is r for f, r in zip(fitted, batch, strict=True)):
                raise  # (not theirs to fix: the ledger writes the batch record by record)
            await self._write_batch(fitted)

    async def _write_batch(self, records: list[UsageRecord]) -> None:
        rows = _encode(records).decode()  # one JSON parameter: the server takes the batch apart
        times = list(map(_TS, records))
        first, last = min(times) // DAY, max(times) // DAY  # (C passes: the loop's, per record)
        days_of = {first} if first == last else set(map(DAY.__rfloordiv__, times))
        needed = {datetime.fromtimestamp(int(day) * DAY, UTC).date() for day in days_of}
        needed |= {max(needed) + timedelta(days=i) for i in range(1, _AHEAD + 1)}

        async def write(conn: Conn) -> None:
            await self._ensure_days(conn, needed)
            try:
                await _write(conn, rows)
            except asyncpg.CheckViolationError:  # no partition for a row: another replica dropped one we knew
                self._days.clear()
                await self._ensure_days(conn, needed)
                await _write(conn, rows)

        await self._call(write)

    # -- reading ------------------------------------------------------------------------

    async def spend(self, query: SpendQuery) -> list[tuple[Group, list[float]]]:
        async def spend(conn: Conn) -> list[tuple[Group, list[float]]]:
            out: list[tuple[Group, list[float]]] = []
            for table, lo, hi in spend_parts(query):
                sql, args = _segment_sql(table, query.group_by, lo, hi)
                rows = cast(list[Sequence[Cell]], await conn.fetch(sql, *args))  # Records: sequences of cells
                out.extend(spend_rows(rows, len(query.group_by)))
            return out

        return await self._call(spend)

    async def requests(self, where: RequestFilter) -> list[UsageRecord]:
        filters = request_filters(where)
        args: list[object] = [_when(float(value)) if column == "ts" else value for column, _, value in filters]
        sql = f"SELECT {', '.join(FIELDS)} FROM usage_records"
        if filters:
            sql += " WHERE " + " AND ".join(f"{column} {op} ${i + 1}" for i, (column, op, _) in enumerate(filters))
        sql += f" ORDER BY ts DESC LIMIT ${len(args) + 1}"
        args.append(where.limit)

        async def fetch(conn: Conn) -> list[UsageRecord]:
            return [_record(row) for row in await conn.fetch(sql, *args)]

        return await self._call(fetch)

    # -- retention ----------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Drop the partitions whose whole day is before `before` (a partition holding `before`
        is kept whole: raw records outlive the retention by less than a day)."""
        async def prune(conn: Conn) -> int:
            removed = 0
            for day in sorted(await _partitions(conn)):
                if _start(day) + DAY > before:
                    continue
                name = _partition(day)
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
                    removed += await _rows_in(conn, name)
                    await conn.execute(f"DROP TABLE {name}")  # detaches it: instant, no dead rows left behind
                self._days.discard(day)
            return removed

        return await self._call(prune)

    # -- run-time keys, teams, the audit trail (KeyStore; the SQL is in postgres_keys) --------

    async def key_version(self) -> int:
        return await self._call(keys.key_version)

    async def changes(self, since: int) -> Snapshot:
        return await self._call(lambda conn: keys.changes(conn, since))

    async def key(self, key_id: str) -> ApiKey | None:
        return await self._call(lambda conn: keys.key(conn, key_id))

    async def team(self, name: str) -> ApiTeam | None:
        return await self._call(lambda conn: keys.team(conn, name))

    async def save(self, change: Change) -> int:
        return await self._call(lambda conn: keys.save(conn, change))

    async def audit(self, since: float | None, limit: int, team: str | None = None) -> list[AuditEntry]:
        return await self._call(lambda conn: keys.audit(conn, since, limit, team))

    async def touch(self, used: dict[str, float]) -> None:
        await self._call(lambda conn: keys.touch(conn, dict(used)))

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        return await self._call(lambda conn: keys.last_used(conn, list(key_ids)))

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """LISTEN on a connection of its own (closed with the store) for every save's NOTIFY."""
        if self._pool is None:
            raise StoreError("the PostgreSQL ledger is not open")
        try:
            await self._listener.add(self.url, on_change, _CONNECT_TIMEOUT)
        except _FAILURES + (ValueError,) as exc:  # (asyncpg's ValueError: a bad URL)
            raise StoreError(f"cannot listen for key changes at {self.where}: {self._say(exc)}") from None
        return True

    async def aclose(self) -> None:
        await self._listener.close(_CONNECT_TIMEOUT)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CONNECT_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()



if TYPE_CHECKING:  # mypy holds the class to both protocols
    def _conforms(store: PostgresStore) -> tuple[LedgerStore, KeyStore]:
        return store, store

redact = redact_url  # (the name the store's callers and tests use)
_passwords = url_passwords


def _partition(day: date) -> str:
    return f"usage_records_{day:%Y%m%d}"


def _day_of(name: str) -> date | None:
    """The day of a partition's name; None if it is not one of ours."""
    prefix, digits = name[:14], name[14:]
    if prefix != "usage_records_" or len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


async def _partitions(conn: Conn) -> set[date]:
    """The days that have a partition."""
    days = (_day_of(row["relname"]) for row in await conn.fetch(_PARTITIONS))
    return {day for day in days if day is not None}


def _start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _today_and_ahead() -> set[date]:
    today = datetime.now(UTC).date()
    return {today + timedelta(days=i) for i in range(_AHEAD + 1)}


# Python's datetimes span years 1 to 9999; a report may ask from (or to) further.
_FIRST, _LAST = datetime(1, 1, 2, tzinfo=UTC).timestamp(), datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(min(max(ts, _FIRST), _LAST), UTC)


# A value PostgreSQL would refuse fails the whole batch, and the Ledger retries a batch until it
# goes in: one such record would stop the ledger. So text loses NUL characters (which text cannot
# hold; a client-sent model name may carry one) and numbers are held to their columns' range
# (a token count from an upstream's answer is not bounded).
_TEXT = ("request_id", "key", "key_id", "team", "model", "provider", "upstream_model", "api", "error", "trace_id")
_MAX_INT, _MAX_SMALL = 2**31 - 1, 2**15 - 1  # int4 and int2
_RANGES = tuple((f, _MAX_INT) for f in ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                                         "reasoning_tokens")) + (("status", _MAX_SMALL), ("attempts", _MAX_SMALL))



def _fit(r: UsageRecord) -> UsageRecord:
    """`r` as its columns can hold it (most often `r` itself). Of its text only the model names
    come from clients (names are printable by config validation, the request id is checked,
    the rest the gateway's own); a count may be anything an upstream said."""
    model, upstream = r.model or "", r.upstream_model or ""
    if "\x00" not in model and "\x00" not in upstream and -_MAX_SMALL <= r.status <= _MAX_SMALL \
            and -_MAX_INT <= min(r.input_tokens, r.output_tokens, r.cached_input_tokens, r.cache_write_tokens,
                                 r.reasoning_tokens) and max(r.input_tokens, r.output_tokens, r.cached_input_tokens,
                                                             r.cache_write_tokens, r.reasoning_tokens) <= _MAX_INT \
            and r.attempts <= _MAX_SMALL:
        return r
    changes: dict[str, object] = {}
    for name in _TEXT:
        value = getattr(r, name)
        if value is not None and "\x00" in value:
            changes[name] = value.replace("\x00", "\ufffd")
    for name, bound in _RANGES:
        value = getattr(r, name)
        if not -bound <= value <= bound:
            changes[name] = bound if value > 0 else -bound
    return msgspec.structs.replace(r, **changes) if changes else r


async def _rows_in(conn: Conn, name: str) -> int:
    """The rows of partition `name`: counted, or the planner's estimate if counting takes longer
    than _COUNT_TIMEOUT. Inside a savepoint, so a cancelled count leaves the drop's transaction usable."""
    try:
        async with conn.transaction():
            return int(await conn.fetchval(f"SELECT count(*) FROM {name}", timeout=_COUNT_TIMEOUT))
    except (TimeoutError, asyncpg.QueryCanceledError):
        estimate = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::regclass", name)
        return max(int(estimate or 0), 0)  # -1: never analysed


# The batch goes as one JSON array of records, taken apart by the server: encoding it is
# msgspec's C (~0.3 us a record) where COPY's binary encoding of 24 columns is ~2.5 us a record
# on the gateway's loop (bench/README.md, "Usage ledger"). The names are the record's fields.
_JSON_TYPES = {"ts": "float8", "status": "int2", "attempts": "int2", "stream": "boolean", "cache_hit": "boolean",
               "cost_usd": "float8", "latency_ms": "float4", "ttft_ms": "float4", "tags": "jsonb", "guardrails": "jsonb",
               **{f: "int4" for f in ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                                      "reasoning_tokens")}}
_JSON_VALUE = {"ts": "to_timestamp(r.ts)",
               "tags": "CASE WHEN jsonb_array_length(r.tags) = 0 THEN NULL "
                       "ELSE ARRAY(SELECT jsonb_array_elements_text(r.tags)) END"}
_INSERT = (f"INSERT INTO usage_records ({', '.join(FIELDS)}) SELECT "
           + ", ".join(_JSON_VALUE.get(f, f"r.{f}") for f in FIELDS)
           + " FROM jsonb_to_recordset($1::jsonb) AS r("
           + ", ".join(f"{f} {_JSON_TYPES.get(f, 'text')}" for f in FIELDS) + ")")
# The batch's rows and its hourly and daily rollups in one statement: the rollups are summed by
# the server from the rows as stored (their hour is the stored timestamp's, to the microsecond),
# so the gateway's loop neither sums them nor sends them (asyncpg's 30 array parameters were
# ~1.6k instructions a record). Rollup rows are upserted in the order of their identity: writers
# that upsert the same rows at once (workers, replicas) lock them in one order, never in a cycle.
_WRITE = (
    f"WITH r AS ({_INSERT} RETURNING ts, key, key_id, team, model, provider, status, error, cost_usd, "
    + ", ".join(SUMS[3:8]) + "), "
    f"h AS (SELECT floor(extract(epoch FROM ts) / {HOUR:.0f})::int8 * {HOUR:.0f} AS bucket, "
    + ", ".join(f"coalesce({c}, '') AS {c}" for c in _IDENT[1:])
    + ", count(*) AS requests, count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors, "
    "count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_requests, "
    + ", ".join(f"sum({c})::int8 AS {c}" for c in SUMS[3:8])
    + f", coalesce(sum(cost_usd), 0)::float8 AS cost_usd FROM r GROUP BY {_BY_IDENT}), "
    f"hourly AS (INSERT INTO usage_hourly AS t ({', '.join((*_IDENT, *SUMS))}) "
    f"SELECT * FROM h ORDER BY {_BY_IDENT} ON CONFLICT ({', '.join(_IDENT)}) DO UPDATE SET {_SET_SUMS}) "
    f"INSERT INTO usage_daily AS t ({', '.join((*_IDENT, *SUMS))}) "
    f"SELECT bucket / {DAY:.0f} * {DAY:.0f}, {', '.join(_IDENT[1:])}, "
    + ", ".join(f"sum({x})::{'float8' if x == 'cost_usd' else 'int8'}" for x in SUMS)
    + f" FROM h GROUP BY {_BY_IDENT} ORDER BY {_BY_IDENT} "
    f"ON CONFLICT ({', '.join(_IDENT)}) DO UPDATE SET {_SET_SUMS}")
_encode = msgspec.json.Encoder().encode
_decode_guardrails = msgspec.json.Decoder(dict[str, dict[str, int]] | None).decode


async def _write(conn: Conn, rows: str) -> None:
    await conn.execute(_WRITE, rows)  # (one statement: one transaction)


# Each record once per tag; a record without tags once, under tag null (as the SQLite store).
_EACH_TAG = " CROSS JOIN LATERAL unnest(COALESCE(tags, ARRAY[NULL]::text[])) AS tag"


def _segment_sql(table: Table, dims: tuple[str, ...], lo: float, hi: float) -> tuple[str, tuple[object, object]]:
    if table == "raw":
        cols = [_RAW_DIM[d] for d in dims]
        source = "usage_records" + (_EACH_TAG if "tag" in dims else "")
        return grouped_select(cols, _RAW_SUMS, source, "ts >= $1 AND ts < $2"), (_when(lo), _when(hi))
    return rollup_select(table, dims, "$1", "$2"), (int(lo), int(hi))


def _record(row: Row) -> UsageRecord:
    values = dict(zip(FIELDS, row, strict=True))
    values["ts"] = values["ts"].timestamp()
    values["tags"] = tuple(values["tags"] or ())
    found = values["guardrails"]
    values["guardrails"] = _decode_guardrails(found) if isinstance(found, str | bytes) else found
    for name in ("latency_ms", "ttft_ms"):  # float4: back to the recorder's thousandths
        if values[name] is not None:
            values[name] = round(values[name], 3)
    return UsageRecord(**values)

"""Persisted state: the usage ledger's database, the keys and teams made at run time, and the
audit trail of admin changes.

A `LedgerStore` is one database, SQLite (`sqlite.py`, a file: the embedded default for one
gateway) or PostgreSQL (`postgres.py`, shared by workers and replicas). Both keep the same
three tables (raw records, hourly and daily rollups), create and migrate them on `open`, and
answer the same queries; `tollway.gateway.store.ledger.Ledger` feeds them off the request
path. A store raises `StoreError` for anything the database did wrong, with a message fit for
an operator (never a connection string with its password).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tollway.core.config import Store as StoreConfig
from tollway.core.ledger.record import UsageRecord
from tollway.core.ledger.report import Group, SpendQuery
from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change, Snapshot

if TYPE_CHECKING:
    from tollway.gateway.store.postgres import PostgresStore
    from tollway.gateway.store.sqlite import SqliteStore


class StoreError(Exception):
    """The database failed, or is not one this gateway can use."""


class Refused(StoreError):
    """The database refused what was written for its data, not its state (PostgreSQL's SQLSTATE
    classes 22 and 23: a value out of a column's range, a constraint): writing it again cannot
    help, so the ledger drops that record rather than retrying it forever."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gateway: this one must not write to it."""


class Conflict(StoreError):
    """A change lost a race (a record it read has changed since) or would break a uniqueness
    rule (two live keys with one name, one digest twice): the admin API's 409."""


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """`/admin/requests`' filters: None matches anything."""

    key: str | None = None
    team: str | None = None
    model: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


class LedgerStore(Protocol):
    backend: str  # "sqlite" | "postgres"

    async def open(self) -> None:
        """Connect, and create or migrate the schema. Raises SchemaTooNew or StoreError."""

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """Insert the records and add them to the rollups, all or nothing."""

    async def spend(self, query: SpendQuery) -> list[tuple[Group, list[float]]]:
        """Rows of (group, sums in tollway.core.ledger.rollup.SUMS order) for the query's range,
        one per group and segment (merge them with tollway.core.ledger.report.merge)."""

    async def requests(self, where: RequestFilter) -> list[UsageRecord]:
        """The newest records matching `where`, newest first."""

    async def prune(self, before: float) -> int:
        """Remove raw records older than `before` (never the rollups); how many went."""

    async def aclose(self) -> None: ...


class KeyStore(Protocol):
    """Run-time keys, teams and the audit trail, in the same database as the ledger.

    Every `save` bumps one counter, the key version, and stamps each record it writes with it,
    so `changes(since)` returns exactly what a process holding `since` has not seen. The
    request path never calls a store: each process holds the table in memory
    (tollway.gateway.tenancy.directory)."""

    backend: str

    async def open(self) -> None:
        """Connect, and create or migrate the schema. Raises SchemaTooNew or StoreError."""

    async def key_version(self) -> int:
        """The newest key version (0: nothing was ever saved)."""

    async def changes(self, since: int) -> Snapshot:
        """Every key and team whose version is past `since` (deleted teams and revoked keys
        included), and the newest version."""

    async def key(self, key_id: str) -> ApiKey | None: ...

    async def team(self, name: str) -> ApiTeam | None: ...

    async def save(self, change: Change) -> int:
        """Write the change's keys, teams and audit entries in one transaction under a new key
        version, which it returns. Raises Conflict (nothing written) when a record named in
        `change.expect` ("key:<id>" or "team:<name>") no longer has the version given there
        (0: must not exist yet), or when two live keys would share a name."""

    async def audit(self, since: float | None, limit: int, team: str | None = None) -> list[AuditEntry]:
        """Audit entries at or after `since`, newest first, at most `limit`; only `team`'s when given."""

    async def touch(self, used: dict[str, float]) -> None:
        """Move each key's last use (key id -> UNIX seconds) forward; never backward, no version bump."""

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]: ...

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """Call `on_change` (on the loop) whenever another connection saves a change. True if
        the database can push (PostgreSQL LISTEN/NOTIFY); False if the caller must poll."""

    async def aclose(self) -> None: ...


def schema_too_new(found: int, known: int) -> SchemaTooNew:
    return SchemaTooNew(f"the ledger database has schema version {found}, newer than this gateway knows ({known}): "
                        "it was migrated by a newer Tollway. Run that version, or point store: at another database.")


def build_store(config: StoreConfig, config_path: str | None) -> LedgerStore:
    """The ledger's store `config` names; a relative SQLite path is relative to the config file."""
    return _database(config, config_path)


def build_key_store(config: StoreConfig, config_path: str | None) -> KeyStore:
    """The store of run-time keys, teams and the audit trail: the same database (and class) as
    the ledger's, on connections of its own."""
    return _database(config, config_path)


def _database(config: StoreConfig, config_path: str | None) -> SqliteStore | PostgresStore:
    if config.backend == "postgres":
        from tollway.gateway.store.postgres import PostgresStore
        if not config.url:
            raise StoreError("store.url is required for the postgres backend")
        return PostgresStore(config.url)
    from tollway.gateway.store.sqlite import SqliteStore
    path = config.path
    if config_path is not None and not os.path.isabs(path) and path != ":memory:":
        path = os.path.join(os.path.dirname(os.path.abspath(config_path)), path)
    return SqliteStore(path)


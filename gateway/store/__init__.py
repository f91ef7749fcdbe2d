"""Persisted state: the usage ledger's database (and, next, runtime keys and the audit trail).

A `LedgerStore` is one database, SQLite (`sqlite.py`, a file: the embedded default for one
gateway) or PostgreSQL (`postgres.py`, shared by workers and replicas). Both keep the same
three tables (raw records, hourly and daily rollups), create and migrate them on `open`, and
answer the same queries; `tollway.gateway.store.ledger.Ledger` feeds them off the request
path. A store raises `StoreError` for anything the database did wrong, with a message fit for
an operator (never a connection string with its password).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tollway.core.config import Store as StoreConfig
from tollway.core.ledger.record import UsageRecord
from tollway.core.ledger.report import Group, SpendQuery


class StoreError(Exception):
    """The database failed, or is not one this gateway can use."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gateway: this one must not write to it."""


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


def schema_too_new(found: int, known: int) -> SchemaTooNew:
    return SchemaTooNew(f"the ledger database has schema version {found}, newer than this gateway knows ({known}): "
                        "it was migrated by a newer Tollway. Run that version, or point store: at another database.")


def build_store(config: StoreConfig, config_path: str | None) -> LedgerStore:
    """The store `config` names; a relative SQLite path is relative to the config file."""
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

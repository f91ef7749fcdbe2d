"""`store:` (where persisted state lives) and `ledger:` (the usage records written to it)."""
from __future__ import annotations

from typing import Literal

import msgspec


class Store(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Persisted state: the usage ledger (and, next, runtime keys and the audit trail)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "tollway.db"  # sqlite; relative to the config file
    url: str | None = None  # postgres, e.g. postgresql://postgres@127.0.0.1:5432/tollway


class Ledger(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True  # with a store configured
    retention_days: int = 90  # raw records; the hourly and daily rollups are kept
    buffer_records: int = 100_000  # records waiting for the database; past it they are dropped and counted
    batch_records: int = 200  # records per database write: a batch is CPU the request path waits for, keep it short
    flush_interval: float = 0.5  # seconds a record may wait for a batch to fill

"""What the PostgreSQL store uses of asyncpg, as protocols (asyncpg ships no type hints): the
modules of that store (postgres.py, postgres_keys.py) share them."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


class Row(Protocol):
    """An asyncpg Record: by position and by column name."""

    def __getitem__(self, key: int | str) -> Any: ...

    def __iter__(self) -> Any: ...

    def __len__(self) -> int: ...


class Conn(Protocol):
    """What this store uses of an asyncpg connection."""

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str: ...

    async def fetch(self, query: str, *args: object) -> list[Row]: ...

    async def fetchval(self, query: str, *args: object, timeout: float | None = None) -> Any: ...

    async def copy_records_to_table(self, table: str, *, records: object, columns: object) -> str: ...

    def transaction(self, *, isolation: str | None = None,
                    readonly: bool = False) -> AbstractAsyncContextManager[object]: ...


# asyncpg's listener callbacks: (connection, backend pid, channel, payload) and (connection).
Notified = Callable[[object, int, str, str], None]
Terminated = Callable[[object], None]


class ListenConn(Protocol):
    """A connection of its own that LISTENs (a pooled one goes back to the pool, and its LISTEN with it)."""

    async def add_listener(self, channel: str, callback: Notified) -> None: ...

    def add_termination_listener(self, callback: Terminated) -> None: ...

    def is_closed(self) -> bool: ...

    async def close(self, *, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

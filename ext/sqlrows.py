"""Rows into SQLite in batches: the ledger's writes, on a connection of their own.

Pure twin of `ext/_sqlrows.pyx`. A writer takes rows of plain values for one INSERT at a
time, inside a transaction the caller opens and ends with `execute`. Values are bound as
they are: None, bool, int, float, str; any other value (a tuple of tags, a dict of findings)
as the text `encode` makes of it (None: NULL). With an `encode`, an empty tuple, list or dict
is NULL without asking it (most records have no tags and no findings: a Python call a value
saved, ~7% of the writer's instructions).

Binding is where Python's `sqlite3` spends the ledger's time (callgrind, bench/README.md
"Usage ledger"): it sends None and bool through its adapter lookup (~1.6k instructions a
value, a formatted AttributeError each), lets go of the GIL around every statement (each row
of an `executemany` too, and under load the writer then waits up to the switch interval to get
it back) and copies every bound string. So this twin binds no None: each placeholder is
`NULLIF(?, x'')` and a None goes in as an empty blob, which it turns back into NULL (no row
binds a blob); and it sends the rows in multi-row statements of a power of two rows, as few
as it can. The compiled twin binds in C instead (NULL as NULL, strings without a copy) and
lets go of the GIL once per call, for all of its rows.
"""
from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Sequence

__all__ = ["LIBRARY_VERSION", "RowWriter"]

LIBRARY_VERSION: str = sqlite3.sqlite_version  # the SQLite library the writer runs on
_NULL = bytearray()  # a None's stand-in (see the module docstring): bound directly, never adapted
_SCALARS = (int, float, str)
_CONTAINERS = (tuple, list, dict)  # empty ones: NULL, with an encoder
_MAX_ROWS = 256  # rows per statement at most (and what the build's variable limit allows)


class RowWriter:
    """One SQLite connection (autocommit: the caller's BEGIN and COMMIT make the transactions)."""

    def __init__(self, path: str, busy_ms: int) -> None:
        self._db: sqlite3.Connection | None = sqlite3.connect(  # (a `file:` path is a URI)
            path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000, uri=path.startswith("file:"))
        self._db.execute("PRAGMA synchronous=NORMAL")  # (per connection; WAL is the file's, set by its opener)
        self._variables = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    def execute(self, sql: str) -> None:
        """A statement without parameters: BEGIN, COMMIT, ROLLBACK, a PRAGMA."""
        self._open().execute(sql)

    def insert(self, head: str, row: str, tail: str, rows: Sequence[tuple[object, ...]],
               encode: Callable[[object], str | None] | None = None, yield_every: int = 0) -> None:
        """`head + row + tail` for each of `rows` (`row`: one row's placeholders, `(?, ?, ...)`;
        `tail`: what follows the VALUES, e.g. an ON CONFLICT clause, or ""). A value not
        bindable as it is goes in as `encode(value)` (an empty tuple, list or dict: NULL);
        without `encode` that is a TypeError. `yield_every` > 0: statements of at most that
        many rows, the core handed to whatever else is ready (`os.sched_yield`) before each:
        a long call then never holds up a thread of the same core for its whole length (the
        compiled twin yields without the GIL, so its thread does not wait for the GIL again)."""
        db = self._open()
        if not rows:
            return
        width = row.count("?")
        values: list[object] = []
        for r in rows:
            if len(r) != width:
                raise ValueError(f"a row of {len(r)} values for a statement of {width}")
            values += [_bindable(v, encode) for v in r]
        one = _nullable(row)
        most = max(1, min(_MAX_ROWS, self._variables // max(width, 1)))
        if yield_every > 0:
            most = min(most, yield_every)
        done, left = 0, len(rows)
        while left:  # the largest power of two rows left, at most `most`
            n = min(most, 1 << (left.bit_length() - 1))
            if yield_every > 0:
                os.sched_yield()
            db.execute(_statement(head, one, tail, n), values[done * width:(done + n) * width])
            done, left = done + n, left - n

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the row writer is closed")
        return self._db


def _bindable(value: object, encode: Callable[[object], str | None] | None) -> object:
    if value is None:
        return _NULL
    if value is True or value is False:
        return int(value)  # (sqlite3 adapts a bool; an int it binds)
    if type(value) in _SCALARS:
        return value
    if isinstance(value, _SCALARS):  # a subclass (an IntEnum, a str Enum): its plain value, whatever its __str__ says
        return int.__int__(value) if isinstance(value, int) else (
            float.__float__(value) if isinstance(value, float) else str.__str__(value))
    if encode is None:
        raise TypeError(f"cannot bind a value of type {type(value).__name__}")
    if type(value) in _CONTAINERS and not value:  # (see the module docstring)
        return _NULL
    text = encode(value)
    if text is None:
        return _NULL
    if not isinstance(text, str):
        raise TypeError(f"encode gave a {type(text).__name__}, not a str")
    return text if type(text) is str else str.__str__(text)


@functools.cache
def _nullable(row: str) -> str:
    """A row's placeholders, each one a NULLIF that turns the None stand-in back into NULL."""
    return row.replace("?", "NULLIF(?, x'')")


@functools.cache
def _statement(head: str, row: str, tail: str, rows: int) -> str:
    return head + ", ".join((row,) * rows) + tail

"""The SQLite row writer (the ledger's batches), against the pure twin and the compiled kernel."""
from __future__ import annotations

import enum
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tollway.ext.sqlrows as pure_sqlrows
from tests.kernels_fixture import compiled_or_skip

HEAD = "INSERT INTO t (a, b, c) VALUES "
ROW = "(?, ?, ?)"


class Level(enum.IntEnum):
    HIGH = 7


class Name(str):
    pass


class Api(str, enum.Enum):  # noqa: UP042 - its str() is "Api.CHAT": the value bound is its text, "chat"
    CHAT = "chat"


def _db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (a, b, c)")
    db.execute("CREATE TABLE s (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    return db


def _typed(db: sqlite3.Connection) -> list[tuple[object, ...]]:
    return db.execute("SELECT a, typeof(a), b, typeof(b), c, typeof(c) FROM t ORDER BY rowid").fetchall()


def test_values_go_in_as_they_are_and_others_as_their_encoded_text(sqlrows_impl, tmp_path):
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    w.execute("BEGIN")
    w.insert(HEAD, ROW, "", [(None, True, False), (-(2**63), 2**63 - 1, 0.5), ("", "é\u2603\U0001F600", -0.0),
                             (Level.HIGH, Name("sub"), ("a", "b")), ((), {"g": 1}, float("inf")), (Api.CHAT, 0, 0)],
             lambda v: ",".join(v) or None if isinstance(v, tuple) else repr(v))
    w.execute("COMMIT")
    assert _typed(db) == [
        (None, "null", 1, "integer", 0, "integer"),
        (-(2**63), "integer", 2**63 - 1, "integer", 0.5, "real"),
        ("", "text", "é\u2603\U0001F600", "text", -0.0, "real"),
        (7, "integer", "sub", "text", "a,b", "text"),
        (None, "null", "{'g': 1}", "text", float("inf"), "real"),
        ("chat", "text", 0, "integer", 0, "integer"),
    ]
    w.close()


def test_an_upsert_tail_adds_up_rows_of_one_call(sqlrows_impl, tmp_path):
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    tail = " ON CONFLICT (k) DO UPDATE SET n = n + excluded.n"
    w.insert("INSERT INTO s (k, n) VALUES ", "(?, ?)", tail, [("x", 1), ("y", 5), ("x", 2)])
    w.insert("INSERT INTO s (k, n) VALUES ", "(?, ?)", tail, [("x", 10)])
    assert db.execute("SELECT k, n FROM s ORDER BY k").fetchall() == [("x", 13), ("y", 5)]
    w.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.none() | st.integers(-(2**63), 2**63 - 1),
                               st.none() | st.floats(allow_nan=False) | st.booleans(),
                               st.none() | st.text(max_size=40)), max_size=300))
def test_any_number_of_rows_goes_in_whole_and_in_order(sqlrows_impl, tmp_path_factory, rows):
    """Every count of rows (the twin's statements of a power of two rows included)."""
    path = tmp_path_factory.mktemp("rows") / "t.db"
    db = _db(path)
    w = sqlrows_impl.RowWriter(str(path), 1000)
    w.execute("BEGIN")
    w.insert(HEAD, ROW, "", rows)
    w.execute("COMMIT")
    got = db.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall()
    assert got == [(a, int(b) if isinstance(b, bool) else b, c) for a, b, c in rows]
    w.close()


def test_rows_are_split_to_the_builds_variable_limit(sqlrows_impl, tmp_path):
    """An old SQLite allows 999 bound values a statement: 11 rows of 3 with a limit of 9
    values go in as statements of 3 + 3 + 3 + 2 rows (the largest power of two left, at most 3)."""
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    w._variables = 9
    statements: list[str] = []
    if sqlrows_impl is pure_sqlrows:  # (the compiled twin's statements are C's: its rows are what is seen)
        w._db.set_trace_callback(statements.append)
    w.insert(HEAD, ROW, "", [(i, str(i), None) for i in range(11)])
    assert db.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == [(i, str(i), None) for i in range(11)]
    if sqlrows_impl is pure_sqlrows:
        assert [s.count("NULLIF") // 3 for s in statements] == [3, 3, 3, 2]
    w.close()


def test_a_failure_in_a_transaction_leaves_no_row_after_rollback(sqlrows_impl, tmp_path):
    db = _db(tmp_path / "t.db")
    db.execute("INSERT INTO s (k, n) VALUES ('taken', 1)")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    w.execute("BEGIN")
    w.insert(HEAD, ROW, "", [(1, 2, 3)])
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        w.insert("INSERT INTO s (k, n) VALUES ", "(?, ?)", "", [("new", 1), ("taken", 2)])
    w.execute("ROLLBACK")
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert db.execute("SELECT k FROM s").fetchall() == [("taken",)]
    w.close()


@pytest.mark.parametrize(("row", "error", "match"), [
    ((1, 2**63, None), OverflowError, "int"),  # a record's data (the ledger drops that record), not the database's state
    ((1, 2), ValueError, "a row of 2 values for a statement of 3"),
    ((1, object(), 3), TypeError, "cannot bind a value of type object"),
])
def test_a_row_it_cannot_bind_is_an_error_before_any_row_goes_in(sqlrows_impl, tmp_path, row, error, match):
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    with pytest.raises(error, match=match):
        w.insert(HEAD, ROW, "", [(0, 0, 0), row])
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    w.close()


def test_with_an_encoder_empty_tuples_lists_and_dicts_are_null_without_asking_it(sqlrows_impl, tmp_path):
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    asked: list[object] = []
    w.insert(HEAD, ROW, "", [((), [], {}), (("a",), ["b"], {"c": 1})], lambda v: asked.append(v) or repr(v))
    assert asked == [("a",), ["b"], {"c": 1}]
    assert _typed(db) == [(None, "null", None, "null", None, "null"),
                          ("('a',)", "text", "['b']", "text", "{'c': 1}", "text")]
    with pytest.raises(TypeError, match="cannot bind a value of type tuple"):  # without one, as ever
        w.insert(HEAD, ROW, "", [((), 0, 0)])
    w.close()


@pytest.mark.parametrize("yield_every", [1, 32, 100, 1000])
def test_rows_go_in_whole_and_in_order_when_the_core_is_handed_over_between_statements(sqlrows_impl, tmp_path,
                                                                                         yield_every):
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    rows = [(i, f"r{i}", float(i)) for i in range(200)]
    w.execute("BEGIN")
    w.insert(HEAD, ROW, "", rows, yield_every=yield_every)
    w.execute("COMMIT")
    assert db.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == rows
    w.close()


def test_the_twin_yields_the_core_before_each_statement_of_at_most_yield_every_rows(tmp_path, monkeypatch):
    """(The compiled twin calls sched_yield in C, without the GIL: not observable from here.)"""
    _db(tmp_path / "t.db")
    yields: list[int] = []
    w = pure_sqlrows.RowWriter(str(tmp_path / "t.db"), 1000)
    inner = w._open()
    statements: list[int] = []
    monkeypatch.setattr(pure_sqlrows.os, "sched_yield", lambda: yields.append(len(statements)))
    monkeypatch.setattr(w, "_open", lambda: _Counting(inner, statements))
    w.insert(HEAD, ROW, "", [(i, i, i) for i in range(200)], yield_every=32)
    assert statements == [32] * 6 + [8] and yields == list(range(7))
    w.insert(HEAD, ROW, "", [(i, i, i) for i in range(5)])  # (none asked: no yield)
    assert len(yields) == 7
    w.close()


class _Counting:
    """A connection that notes the rows of each INSERT it runs."""

    def __init__(self, inner: sqlite3.Connection, statements: list[int]) -> None:
        self.inner, self.statements = inner, statements

    def execute(self, sql: str, values: list[object] = ()) -> sqlite3.Cursor:  # type: ignore[assignment]
        self.statements.append(sql.count("?") // 3)  # (three values a row)
        return self.inner.execute(sql, values)


def test_an_encoder_that_returns_no_text_is_a_type_error(sqlrows_impl, tmp_path):
    _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    with pytest.raises(TypeError):
        w.insert(HEAD, ROW, "", [(1, {"x": 1}, 3)], lambda v: 42)
    w.close()


def test_sql_errors_and_a_closed_writer_are_sqlite_errors(sqlrows_impl, tmp_path):
    _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        w.insert("INSERT INTO nope (a) VALUES ", "(?)", "", [(1,)])
    with pytest.raises(sqlite3.OperationalError):
        w.execute("COMMIT")  # no transaction is open
    w.close()
    w.close()  # (twice: nothing)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        w.execute("BEGIN")
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        w.insert(HEAD, ROW, "", [(1, 2, 3)])


def test_a_file_it_cannot_open_is_an_operational_error(sqlrows_impl, tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        sqlrows_impl.RowWriter(str(tmp_path / "no" / "such" / "dir" / "t.db"), 1000)


def test_a_locked_database_waits_its_busy_time_then_fails(sqlrows_impl, tmp_path):
    """Another process's (here: connection's) write transaction holds the file: the writer
    waits up to its busy time for it, and says `locked` past it."""
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 50)
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        w.execute("BEGIN IMMEDIATE")
    db.execute("COMMIT")
    w.execute("BEGIN IMMEDIATE")
    w.insert(HEAD, ROW, "", [(1, 2, 3)])
    w.execute("COMMIT")
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    w.close()


def test_the_compiled_writer_lets_the_loop_run_while_sqlite_works(tmp_path):
    """The compiled twin holds the GIL only to read its rows: while SQLite waits on a lock
    (its busy time), another thread runs Python."""
    compiled = compiled_or_skip("sqlrows")
    db = _db(tmp_path / "t.db")
    w = compiled.RowWriter(str(tmp_path / "t.db"), 300)
    db.execute("BEGIN IMMEDIATE")
    counted = []
    done = threading.Event()

    def count() -> None:
        n = 0
        while not done.is_set():
            n += 1
        counted.append(n)

    other = threading.Thread(target=count)
    other.start()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            w.execute("BEGIN IMMEDIATE")
    finally:
        done.set()
        other.join()
        db.execute("ROLLBACK")
        w.close()
    assert counted[0] > 1000  # the other thread ran meanwhile


def test_the_compiled_kernel_runs_on_the_sqlite3_modules_library():
    compiled = compiled_or_skip("sqlrows")
    assert compiled.LIBRARY_VERSION == sqlite3.sqlite_version == pure_sqlrows.LIBRARY_VERSION


def test_many_statement_shapes_go_in_right_past_the_statement_cache(sqlrows_impl, tmp_path):
    """More SQL shapes than the compiled twin keeps prepared (64): each call still writes its
    rows, whatever was finalized to make room."""
    db = _db(tmp_path / "t.db")
    w = sqlrows_impl.RowWriter(str(tmp_path / "t.db"), 1000)
    for i in range(80):
        w.insert(f"INSERT INTO t (a, b, c) /* {i} */ VALUES ", ROW, "", [(i, j, None) for j in range(i % 7 + 1)])
    assert db.execute("SELECT count(*), sum(a) FROM t").fetchone() == (sum(i % 7 + 1 for i in range(80)),
                                                                     sum(i * (i % 7 + 1) for i in range(80)))
    w.close()


def test_the_compiled_writer_refuses_a_second_thread_while_a_call_is_under_way(tmp_path):
    """The GIL is let go during a call: a close (or another call) from another thread then
    must not touch the connection under it."""
    compiled = compiled_or_skip("sqlrows")
    db = _db(tmp_path / "t.db")
    w = compiled.RowWriter(str(tmp_path / "t.db"), 400)
    db.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE waits its busy time on this
    failures: list[BaseException] = []
    calling = threading.Event()

    def waiting() -> None:
        calling.set()
        try:
            w.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            failures.append(exc)

    other = threading.Thread(target=waiting)
    other.start()
    try:
        assert calling.wait(5)
        time.sleep(0.05)  # (the other call is waiting on the lock now: 400 ms)
        for call in (w.close, lambda: w.execute("BEGIN"), lambda: w.insert(HEAD, ROW, "", [(1, 2, 3)])):
            with pytest.raises(sqlite3.ProgrammingError, match="in use by another thread"):
                call()
    finally:
        other.join()
        db.execute("ROLLBACK")
    assert len(failures) == 1 and "locked" in str(failures[0])
    w.close()

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/sqlrows.py`: rows into SQLite, bound in C, the GIL let go once a call.

The twin's cost is Python's `sqlite3` binding (callgrind, per ledger record: ~10k instructions
in `bind_param`, half of them copying strings, against ~13k for SQLite's own insert). Here a
call first reads its rows' values into a C array with the GIL held (a str as a pointer to its
UTF-8, which the row keeps alive and nothing can change), then, without the GIL, binds each
row to one prepared statement (strings SQLITE_STATIC: not copied), steps and resets it. The
event loop runs meanwhile: the writer's thread never waits for the GIL in the middle of a batch.

It opens its own connection to the file, through the SQLite library the `sqlite3` module uses:
two copies of SQLite in one process would release each other's POSIX locks on the file, so
this module refuses to load (ImportError: the twin is used) when the versions differ.
"""
from cpython.bytes cimport PyBytes_AsStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport strlen

import os
import sqlite3 as pysqlite  # (`sqlite3` is the C library's connection type here)

__all__ = ["LIBRARY_VERSION", "RowWriter"]


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    ctypedef long long sqlite3_int64
    ctypedef void (*destructor)(void*)
    const char* sqlite3_libversion()
    int sqlite3_open_v2(const char* filename, sqlite3** db, int flags, const char* vfs)
    int sqlite3_close_v2(sqlite3* db)
    int sqlite3_busy_timeout(sqlite3* db, int ms)
    int sqlite3_limit(sqlite3* db, int id, int value)
    int sqlite3_exec(sqlite3* db, const char* sql, void* callback, void* arg, char** errmsg)
    int sqlite3_prepare_v2(sqlite3* db, const char* sql, int n, sqlite3_stmt** stmt, const char** tail)
    int sqlite3_bind_parameter_count(sqlite3_stmt* stmt)
    int sqlite3_bind_null(sqlite3_stmt* stmt, int i)
    int sqlite3_bind_int64(sqlite3_stmt* stmt, int i, sqlite3_int64 value)
    int sqlite3_bind_double(sqlite3_stmt* stmt, int i, double value)
    int sqlite3_bind_text(sqlite3_stmt* stmt, int i, const char* text, int n, destructor d)
    int sqlite3_step(sqlite3_stmt* stmt)
    int sqlite3_reset(sqlite3_stmt* stmt)
    int sqlite3_finalize(sqlite3_stmt* stmt)
    const char* sqlite3_errmsg(sqlite3* db)
    int SQLITE_OK, SQLITE_DONE, SQLITE_CONSTRAINT
    int SQLITE_OPEN_READWRITE, SQLITE_OPEN_CREATE, SQLITE_OPEN_NOMUTEX, SQLITE_OPEN_URI, SQLITE_LIMIT_VARIABLE_NUMBER
    destructor SQLITE_STATIC


LIBRARY_VERSION = sqlite3_libversion().decode()
if LIBRARY_VERSION != pysqlite.sqlite_version:
    raise ImportError(f"the sqlite3 module runs SQLite {pysqlite.sqlite_version}, this kernel {LIBRARY_VERSION}")

cdef enum Kind:
    NULL_VALUE, INT_VALUE, FLOAT_VALUE, TEXT_VALUE

cdef struct Value:
    Kind kind
    sqlite3_int64 i
    double d
    const char* s
    Py_ssize_t n

cdef int _MAX_STATEMENTS = 64  # prepared statements kept (a caller's SQL: a few shapes, in a few sizes)
cdef int _PER_CALL = 10  # statements one insert may prepare: a row's, and a statement per power of two <= _MAX_ROWS
cdef Py_ssize_t _MAX_ROWS = 256  # rows a statement at most (and what the build's variable limit allows)

cdef struct Chunk:
    sqlite3_stmt* stmt  # a statement of `rows` rows
    Py_ssize_t rows


cdef class RowWriter:
    """One SQLite connection (autocommit: the caller's BEGIN and COMMIT make the transactions)."""

    cdef sqlite3* _db
    cdef dict _prepared  # SQL text -> index into _stmts
    cdef sqlite3_stmt** _stmts
    cdef public Py_ssize_t _variables  # bound values a statement may hold (SQLite's limit; tests lower it)
    cdef bint _busy  # a call is under way (its GIL let go): another thread's call or close must not touch the connection

    def __cinit__(self, str path, int busy_ms):
        self._db = NULL
        self._prepared = {}
        self._stmts = <sqlite3_stmt**>PyMem_Malloc(_MAX_STATEMENTS * sizeof(sqlite3_stmt*))
        if self._stmts == NULL:
            raise MemoryError()
        cdef bytes name = os.fsencode(path)  # (as sqlite3.connect encodes it)
        cdef const char* c_name = name
        cdef int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        if path.startswith("file:"):  # a URI, as the twin reads one (e.g. a shared in-memory database)
            flags |= SQLITE_OPEN_URI
        cdef int rc
        with nogil:
            # (no mutex of SQLite's: `_busy` keeps the connection to one thread at a time, and each
            # bind would take and leave one)
            rc = sqlite3_open_v2(c_name, &self._db, flags, NULL)
        if rc != SQLITE_OK:
            message = self._message()
            self._close()
            raise pysqlite.OperationalError(f"cannot open {path}: {message}")
        sqlite3_busy_timeout(self._db, busy_ms)
        self._variables = sqlite3_limit(self._db, SQLITE_LIMIT_VARIABLE_NUMBER, -1)
        self._execute("PRAGMA synchronous=NORMAL")  # (per connection; WAL is the file's, set by its opener)

    def __dealloc__(self):
        self._close()
        PyMem_Free(self._stmts)

    def execute(self, str sql):
        """A statement without parameters: BEGIN, COMMIT, ROLLBACK, a PRAGMA."""
        self._enter()
        try:
            self._execute(sql)
        finally:
            self._busy = False

    cdef _execute(self, str sql):
        cdef bytes text = sql.encode()
        cdef const char* c_sql = text
        cdef int rc
        with nogil:
            rc = sqlite3_exec(self._db, c_sql, NULL, NULL, NULL)
        if rc != SQLITE_OK:
            raise self._error(rc)

    def insert(self, str head, str row, str tail, rows, encode=None, Py_ssize_t yield_every=0):
        """`head + row + tail` for each of `rows` (see tollway.ext.sqlrows.RowWriter.insert)."""
        self._enter()
        try:
            self._insert(head, row, tail, rows, encode, yield_every)
        finally:
            self._busy = False

    cdef _insert(self, str head, str row, str tail, rows, encode, Py_ssize_t yield_every):
        # Every row as a tuple of this list's own (alive, with every text bound from it, until
        # the rows are in, whatever the caller's list or rows meanwhile: the GIL is let go).
        cdef list held = [x if type(x) is tuple else tuple(x) for x in rows]
        cdef Py_ssize_t count = len(held)
        if count == 0:
            return
        if len(self._prepared) > _MAX_STATEMENTS - _PER_CALL:  # (room for this call's: none is finalized under it)
            self._finalize_all()
        cdef Py_ssize_t width = sqlite3_bind_parameter_count(self._statement(head, row, tail, 1))
        cdef Value* values = <Value*>PyMem_Malloc(count * width * sizeof(Value))
        cdef Chunk* chunks = <Chunk*>PyMem_Malloc(count * sizeof(Chunk))
        cdef list texts = []  # what `encode` made: alive until the rows are in
        cdef int rc = SQLITE_DONE
        cdef Py_ssize_t r, n, left = count, most = max(1, min(_MAX_ROWS, self._variables // max(width, 1)))
        if yield_every > 0:  # (statements of at most that many rows, the core handed over before each)
            most = min(most, yield_every)
        cdef Py_ssize_t parts = 0
        try:
            if values == NULL or chunks == NULL:
                raise MemoryError()
            for r in range(count):
                _read_row(<tuple>held[r], width, values + r * width, encode, texts)
            while left:  # statements of the largest power of two rows left, at most `most` (as the twin)
                n = min(most, (<Py_ssize_t>1) << (_bit_length(left) - 1))
                chunks[parts].stmt = self._statement(head, row, tail, n)
                chunks[parts].rows = n
                parts += 1
                left -= n
            with nogil:
                rc = _put_chunks(chunks, parts, values, width, yield_every > 0)
            if rc != SQLITE_DONE:
                raise self._error(rc)
        finally:
            PyMem_Free(values)
            PyMem_Free(chunks)

    def close(self):
        if self._busy:
            raise pysqlite.ProgrammingError("the row writer is in use by another thread")
        self._close()

    cdef _enter(self):
        """Start a call: the connection open, and no other call under way (one thread at a time)."""
        if self._db == NULL:
            raise pysqlite.ProgrammingError("the row writer is closed")
        if self._busy:
            raise pysqlite.ProgrammingError("the row writer is in use by another thread")
        self._busy = True

    cdef sqlite3_stmt* _statement(self, str head, str row, str tail, Py_ssize_t rows) except NULL:
        """The prepared statement of `head` + `rows` times `row` + `tail`, prepared once."""
        key = (head, row, tail, rows)
        cdef object at = self._prepared.get(key)
        if at is not None:
            return self._stmts[<Py_ssize_t>at]
        cdef bytes text = (head + ", ".join((row,) * rows) + tail).encode()
        cdef const char* c_sql = text
        cdef sqlite3_stmt* stmt = NULL
        cdef int rc
        with nogil:
            rc = sqlite3_prepare_v2(self._db, c_sql, -1, &stmt, NULL)
        if rc != SQLITE_OK or stmt == NULL:
            raise pysqlite.OperationalError(self._message() if rc != SQLITE_OK else "no statement in the SQL text")
        cdef Py_ssize_t index = len(self._prepared)
        self._stmts[index] = stmt
        self._prepared[key] = index
        return stmt

    cdef void _finalize_all(self):
        cdef Py_ssize_t i
        for i in range(len(self._prepared)):
            sqlite3_finalize(self._stmts[i])
        self._prepared.clear()

    cdef void _close(self):
        if self._db != NULL:
            self._finalize_all()
            sqlite3_close_v2(self._db)
            self._db = NULL

    cdef object _error(self, int rc):
        """The sqlite3 module's exception for result code `rc` (a constraint's: IntegrityError)."""
        if rc & 0xFF == SQLITE_CONSTRAINT:
            return pysqlite.IntegrityError(self._message())
        return pysqlite.OperationalError(self._message())

    cdef str _message(self):
        if self._db == NULL:
            return "out of memory"
        cdef const char* text = sqlite3_errmsg(self._db)
        return text[:strlen(text)].decode("utf-8", "replace")


cdef int _read_row(tuple values, Py_ssize_t width, Value* out, object encode, list texts) except -1:
    """A row's values into `out`, as the twin binds them."""
    if len(values) != width:
        raise ValueError(f"a row of {len(values)} values for a statement of {width}")
    cdef Py_ssize_t i
    cdef object v
    for i in range(width):
        v = values[i]
        if v is None:
            out[i].kind = NULL_VALUE
        elif v is True or v is False:
            out[i].kind = INT_VALUE
            out[i].i = 1 if v is True else 0
        elif isinstance(v, int):
            out[i].kind = INT_VALUE
            out[i].i = PyLong_AsLongLong(v)  # (OverflowError past 2**63, as sqlite3 says)
        elif isinstance(v, float):
            out[i].kind = FLOAT_VALUE
            out[i].d = PyFloat_AS_DOUBLE(v)
        elif isinstance(v, str):
            _read_text(v, &out[i], texts)
        elif encode is None:
            raise TypeError(f"cannot bind a value of type {type(v).__name__}")
        elif (type(v) is tuple or type(v) is list or type(v) is dict) and not v:  # (as the twin)
            out[i].kind = NULL_VALUE
        else:
            v = encode(v)
            if v is None:
                out[i].kind = NULL_VALUE
            elif isinstance(v, str):
                texts.append(v)
                _read_text(v, &out[i], texts)
            else:
                raise TypeError(f"encode gave a {type(v).__name__}, not a str")
    return 0


cdef int _read_text(object text, Value* out, list texts) except -1:
    """A text's UTF-8 into `out`: a str the row holds, or one kept in `texts` (alive till the rows are in)."""
    if type(text) is not str:  # a subclass: its plain text (what the twin's str() gives)
        text = str.__str__(text)
        texts.append(text)
    out.kind = TEXT_VALUE
    out.s = PyUnicode_AsUTF8AndSize(text, &out.n)  # (kept in the str: valid while it lives)
    if out.n > 0x7FFFFFFF:
        raise OverflowError("a text too long to bind")
    return 0


cdef Py_ssize_t _bit_length(Py_ssize_t n) noexcept:
    cdef Py_ssize_t bits = 0
    while n:
        bits += 1
        n >>= 1
    return bits


cdef int _put_chunks(Chunk* chunks, Py_ssize_t parts, Value* values, Py_ssize_t width, bint pause) noexcept nogil:
    """Each chunk's rows bound to its statement, stepped, reset: SQLITE_DONE, or the error code.
    `pause`: the core handed to whatever else is ready (sched_yield) before each chunk."""
    cdef Py_ssize_t p, i, at = 0
    cdef int rc = SQLITE_DONE
    for p in range(parts):
        if pause:
            sched_yield()
        rc = _put(chunks[p].stmt, values + at, chunks[p].rows * width)
        if rc != SQLITE_DONE:
            return rc
        at += chunks[p].rows * width
    return rc


cdef int _put(sqlite3_stmt* stmt, Value* values, Py_ssize_t count) noexcept nogil:
    """Bind `count` values, step, reset: SQLITE_DONE, or the error code."""
    cdef Py_ssize_t i
    cdef int rc = SQLITE_OK
    for i in range(count):
        if values[i].kind == NULL_VALUE:
            rc = sqlite3_bind_null(stmt, <int>i + 1)
        elif values[i].kind == INT_VALUE:
            rc = sqlite3_bind_int64(stmt, <int>i + 1, values[i].i)
        elif values[i].kind == FLOAT_VALUE:
            rc = sqlite3_bind_double(stmt, <int>i + 1, values[i].d)
        else:
            rc = sqlite3_bind_text(stmt, <int>i + 1, values[i].s, <int>values[i].n, SQLITE_STATIC)
        if rc != SQLITE_OK:
            sqlite3_reset(stmt)
            return rc
    rc = sqlite3_step(stmt)
    sqlite3_reset(stmt)
    return rc

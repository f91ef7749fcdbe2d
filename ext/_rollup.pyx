# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The rollup kernel: a batch of rows summed per time bucket and owner in C loops (the ledger's
hourly rollups; the twin, ext/rollup.py, says what the sums are).

The ledger sums every record of every request (on the SQLite writer's thread with the GIL
held, or on the loop for PostgreSQL): as Python it was ~7k instructions a record, a quarter of
the SQLite writer's work. Here a row costs a few comparisons and additions: consecutive rows
of one owner and bucket (most of a batch) skip the dictionary, and the sums are C integers
and doubles until the end. A row the C types cannot hold exactly (a count past 64 bits, a
value of another type) sends the whole batch to the twin, which gives the exact answer or the
error Python would.
"""
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLong, PyLong_FromDouble
from cpython.object cimport PyObject_IsTrue
from libc.math cimport copysign, floor, fmod, isfinite
from libc.stdlib cimport free, realloc

from tollway.ext.rollup import Spec
from tollway.ext.rollup import bucket_sums as _twin_sums

__all__ = ["Spec", "bucket_sums"]


cdef extern from *:
    bint __builtin_saddll_overflow(long long a, long long b, long long* out) nogil


class _Inexact(Exception):
    """A row the C sums cannot take exactly: the twin sums the batch."""


cdef double _floor_div(double vx, double wx) noexcept nogil:
    """Python's float `vx // wx` (CPython's _float_div_mod), bit for bit; wx is not zero."""
    cdef double mod = fmod(vx, wx)
    cdef double div = (vx - mod) / wx
    cdef double out
    if mod:
        if (wx < 0) != (mod < 0):
            div -= 1.0
    if div:
        out = floor(div)
        if div - out > 0.5:
            out += 1.0
        return out
    return copysign(0.0, vx / wx)


cdef inline object _owner_value(object v):
    """`v or ""`: no value and "" are one owner."""
    if v is None:
        return ""
    if type(v) is str:
        return v if len(<str>v) else ""
    return v if PyObject_IsTrue(v) else ""


cdef inline long long _exact_int(object v) except? -1:
    """An int column's value as a C integer: _Inexact for another type, OverflowError past 64
    bits (either sends the batch to the twin)."""
    if type(v) is not int:
        raise _Inexact
    return PyLong_AsLongLong(v)


cdef class _Groups:
    """The sums of each (bucket, owner) seen so far: `width` C integers and a double each."""
    cdef long long* ints
    cdef double* costs
    cdef Py_ssize_t count, room, width
    cdef list idents
    cdef dict index

    def __cinit__(self, Py_ssize_t width):
        self.width = width
        self.idents = []
        self.index = {}

    def __dealloc__(self):
        free(self.ints)
        free(self.costs)

    cdef Py_ssize_t find(self, tuple ident) except -1:
        cdef object at = self.index.get(ident)
        if at is not None:
            return <Py_ssize_t>at
        if self.count == self.room:
            self.grow()
        cdef Py_ssize_t g = self.count, k
        for k in range(self.width):
            self.ints[g * self.width + k] = 0
        self.costs[g] = 0.0
        self.index[ident] = g
        self.idents.append(ident)
        self.count += 1
        return g

    cdef int grow(self) except -1:
        cdef Py_ssize_t room = self.room * 2 if self.room else 8
        cdef long long* ints = <long long*>realloc(self.ints, room * self.width * sizeof(long long))
        if ints == NULL:
            raise MemoryError()
        self.ints = ints
        cdef double* costs = <double*>realloc(self.costs, room * sizeof(double))
        if costs == NULL:
            raise MemoryError()
        self.costs = costs
        self.room = room
        return 0

    cdef int add(self, Py_ssize_t g, Py_ssize_t k, long long value) except -1:
        cdef long long* at = &self.ints[g * self.width + k]
        if __builtin_saddll_overflow(at[0], value, at):
            raise _Inexact
        return 0

    cdef dict sums(self):
        cdef dict out = {}
        cdef Py_ssize_t g, k
        cdef list row
        for g in range(self.count):
            row = [self.ints[g * self.width + k] for k in range(self.width)]
            row.append(self.costs[g])
            out[self.idents[g]] = row
        return out


cdef enum:
    MAX_COLUMNS = 16  # owner and count columns the kernel takes (the ledger's: 5 and 5)


def bucket_sums(rows, spec):
    """See the twin (ext/rollup.py)."""
    cdef list held = rows if type(rows) is list else list(rows)
    columns = (spec.ts, spec.status, spec.error, spec.cost, *spec.owner, *spec.counts)
    if not spec.seconds or len(spec.owner) > MAX_COLUMNS or len(spec.counts) > MAX_COLUMNS \
            or any(type(c) is not int or c < 0 for c in columns):
        return _twin_sums(held, spec)  # (its ZeroDivisionError; Python's indexing)
    try:
        return _sums(held, spec, max(columns) + 1)
    except (_Inexact, OverflowError):
        return _twin_sums(held, spec)


cdef dict _sums(list rows, spec, Py_ssize_t width):
    cdef Py_ssize_t ts_at = spec.ts, status_at = spec.status, error_at = spec.error, cost_at = spec.cost
    cdef double seconds = spec.seconds
    cdef Py_ssize_t owners = len(spec.owner), counts = len(spec.counts), g = -1, i, k
    cdef Py_ssize_t owner_at[MAX_COLUMNS]
    cdef Py_ssize_t counts_at[MAX_COLUMNS]
    for i in range(owners):
        owner_at[i] = spec.owner[i]
    for k in range(counts):
        counts_at[k] = spec.counts[k]
    cdef _Groups groups = _Groups(3 + counts)
    cdef list last = [None] * owners  # the previous row's owner, and its group (g)
    cdef double bucket, last_bucket = 0.0
    cdef tuple row, ident
    cdef object ts, value, cost
    cdef bint same
    for item in rows:
        row = item if type(item) is tuple else tuple(item)
        if len(row) < width:  # (the twin's IndexError)
            raise _Inexact
        ts = row[ts_at]
        if type(ts) is not float:
            raise _Inexact
        bucket = _floor_div(PyFloat_AS_DOUBLE(ts), seconds) * seconds
        if not isfinite(bucket):
            PyLong_FromDouble(bucket)  # (the twin's error, before any owner is looked at)
        same = g >= 0 and bucket == last_bucket
        for i in range(owners):
            value = _owner_value(row[owner_at[i]])
            # The previous row's group without the dictionary only for text, whose == and hash
            # agree; any other owner is looked up as the twin does.
            if same and (type(value) is not str or type(last[i]) is not str
                         or (value is not last[i] and value != last[i])):
                same = False
            last[i] = value
        if not same:
            ident = (PyLong_FromDouble(bucket), *last)
            g = groups.find(ident)
            last_bucket = bucket
        groups.add(g, 0, 1)
        if _exact_int(row[status_at]) > 399 or row[error_at] is not None:
            groups.add(g, 1, 1)
        cost = row[cost_at]
        if cost is None:
            groups.add(g, 2, 1)
        elif type(cost) is float:
            groups.costs[g] += PyFloat_AS_DOUBLE(cost)  # (0.0 adds nothing, as in the twin)
        else:
            raise _Inexact
        for k in range(counts):
            groups.add(g, 3 + k, _exact_int(row[counts_at[k]]))
    return groups.sums()

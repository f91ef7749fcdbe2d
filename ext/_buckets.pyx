# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/buckets.py`: the in-memory limiter's bucket table.

The table is one malloc'd array of C structs (doubling as it grows), so a check-and-reserve
over several buckets is a few loads and stores with no Python float in sight; the only Python
work left per call is reading the argument sequences. The arithmetic follows the twin
operation for operation, so both give bit-identical levels (the differential test checks).
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport INFINITY

__all__ = ["BucketTable", "Gate"]

cdef enum:
    _STACK_SLOTS = 8  # try_take over up to this many slots needs no allocation


cdef struct Bucket:
    double capacity
    double refill      # tokens per second; 0 makes a gauge
    double level       # at `stamp`; negative is debt
    double stamp       # time of the last update; -inf until first touched


cdef struct _Scratch:
    # Room for one all-or-nothing take over k buckets: the bucket pointers and the amounts.
    # On the C stack up to _STACK_SLOTS (every plan seen so far), else one allocation.
    Bucket* stack_b[_STACK_SLOTS]
    double stack_a[_STACK_SLOTS]
    Bucket** bs
    double* amt


cdef int _scratch_open(_Scratch* sc, Py_ssize_t k) except -1:
    if k <= _STACK_SLOTS:
        sc.bs, sc.amt = sc.stack_b, sc.stack_a
        return 0
    sc.bs = <Bucket**>PyMem_Malloc(k * (sizeof(Bucket*) + sizeof(double)))
    if sc.bs == NULL:
        raise MemoryError()
    sc.amt = <double*>(sc.bs + k)
    return 0


cdef inline void _scratch_close(_Scratch* sc) noexcept:
    if sc.bs != sc.stack_b:
        PyMem_Free(sc.bs)


cdef class BucketTable:
    """A growable table of token buckets addressed by slot id (see tollway.ext.buckets)."""

    cdef Bucket* _b
    cdef Py_ssize_t _n, _cap

    def __dealloc__(self):
        PyMem_Free(self._b)

    def __len__(self):
        return self._n

    def add(self, double capacity, double refill_per_sec):
        """Add a full bucket; return its slot id. Refill 0 makes a gauge that never refills."""
        cdef Bucket* grown
        if self._n == self._cap:
            grown = <Bucket*>PyMem_Realloc(self._b, max(16, 2 * self._cap) * sizeof(Bucket))
            if grown == NULL:
                raise MemoryError()
            self._b = grown
            self._cap = max(16, 2 * self._cap)
        self._b[self._n] = Bucket(capacity, refill_per_sec, capacity, -INFINITY)
        self._n += 1
        return self._n - 1

    def reconfigure(self, Py_ssize_t slot, double capacity, double refill_per_sec):
        """Change a slot's limits: a bucket keeps its level (clamped to the new capacity), a
        gauge that stays one keeps what is in flight (see tollway.ext.buckets)."""
        cdef Bucket* b = self._slot(slot)
        if refill_per_sec == 0.0 and b.refill == 0.0:
            b.level = b.level + (capacity - b.capacity)
        b.capacity = capacity
        b.refill = refill_per_sec
        if capacity < b.level:
            b.level = capacity

    @cython.boundscheck(True)  # indexes Python sequences by caller-given values: check them
    @cython.wraparound(True)
    def try_take(self, slots, amounts, double now):
        """Take `amounts[i]` from every `slots[i]`, or nothing.

        Returns 0.0 on success, else the seconds until all amounts would be available
        (math.inf if one can never be: amount above capacity, or a short gauge).
        Raises ValueError if the sequences differ in length, IndexError on a bad slot.
        """
        cdef Py_ssize_t k = len(slots)
        cdef _Scratch sc
        if len(amounts) != k:
            raise ValueError("slots and amounts differ in length")
        _scratch_open(&sc, k)
        try:
            return self._try_take(slots, amounts, now, k, sc.bs, sc.amt)
        finally:
            _scratch_close(&sc)

    @cython.boundscheck(True)  # indexes Python sequences by caller-given values: check them
    @cython.wraparound(True)
    def reserve(self, slots, measures, demand, double now):
        """A whole limit decision in one call: take min(demand[measures[i]], capacity) from
        every slots[i], or nothing. Returns 0.0 on success, else the seconds until it would
        fit (math.inf: never). Raises ValueError if slots and measures differ in length,
        IndexError on a bad slot."""
        cdef Py_ssize_t k = len(slots), j
        cdef _Scratch sc
        cdef double a
        if len(measures) != k:
            raise ValueError("slots and measures differ in length")
        _scratch_open(&sc, k)
        try:
            for j in range(k):  # Python conversions first: they may run code that grows the table
                sc.amt[j] = demand[measures[j]]
            for j in range(k):
                sc.bs[j] = self._slot(slots[j])
                a = sc.amt[j]
                sc.amt[j] = a if a < sc.bs[j].capacity else sc.bs[j].capacity
            return _take_all(sc.bs, sc.amt, k, now)
        finally:
            _scratch_close(&sc)

    @cython.boundscheck(True)  # indexes Python sequences by caller-given values: check them
    @cython.wraparound(True)
    def settle(self, slots, measures, reserved, used, double now):
        """Correct a reserve by what was really used: slots[i] is charged
        used[m] - min(reserved[m], capacity), m = measures[i] (negative gives back, capped at
        capacity; positive may leave debt; 0 touches nothing). Raises ValueError if slots and
        measures differ in length, IndexError on a bad slot."""
        cdef Py_ssize_t k = len(slots), j, m
        cdef double r, u
        if len(measures) != k:
            raise ValueError("slots and measures differ in length")
        for j in range(k):
            m = measures[j]
            r = reserved[m]  # conversions before the bucket pointer (see reserve)
            u = used[m]
            _correct(self._slot(slots[j]), r, u, now)

    def levels(self, slots, double now):
        """The levels of slots at now (no state changes). Raises IndexError on a bad slot."""
        return tuple([_refilled(self._slot(slot), now) for slot in slots])

    def give(self, Py_ssize_t slot, double amount, double now):
        """Return tokens to a slot (capped at its capacity)."""
        cdef Bucket* b = self._slot(slot)
        cdef double level = _refill_to(b, now) + amount
        b.level = level if level < b.capacity else b.capacity

    def take(self, Py_ssize_t slot, double amount, double now):
        """Charge a slot unconditionally; its level may go negative (debt)."""
        cdef Bucket* b = self._slot(slot)
        b.level = _refill_to(b, now) - amount

    def level(self, Py_ssize_t slot, double now):
        """The slot's level at `now` (no state changes)."""
        return _refilled(self._slot(slot), now)

    def seconds_until_full(self, Py_ssize_t slot, double now):
        """Seconds until the slot is full again (0.0 if full, math.inf for a short gauge)."""
        cdef Bucket* b = self._slot(slot)
        cdef double missing = b.capacity - _refilled(b, now)
        if missing <= 0.0:
            return 0.0
        return missing / b.refill if b.refill > 0.0 else INFINITY

    def capacity(self, Py_ssize_t slot):
        """The slot's capacity."""
        return self._slot(slot).capacity

    cdef Bucket* _slot(self, Py_ssize_t slot) except NULL:
        if slot < 0 or slot >= self._n:
            raise IndexError(f"no bucket slot {slot}")
        return &self._b[slot]

    @cython.boundscheck(True)
    @cython.wraparound(True)
    cdef double _try_take(self, slots, amounts, double now, Py_ssize_t k, Bucket** bs, double* amt) except? -1.0:
        cdef Py_ssize_t j
        for j in range(k):  # conversions first (see reserve)
            amt[j] = amounts[j]
        for j in range(k):
            bs[j] = self._slot(slots[j])
        return _take_all(bs, amt, k, now)


cdef class Gate:
    """The buckets of one limit plan in a table, fixed once (see tollway.ext.buckets.Gate).

    Slot ids and measure indexes live in one C array, so a decision reads nothing from Python
    but the demand tuple; slots are looked up in the table on every call (the table's array
    moves when it grows)."""

    cdef readonly BucketTable table
    cdef readonly tuple slots, measures
    cdef Py_ssize_t* _idx   # k slot ids, then k measure indexes
    cdef Py_ssize_t _k

    def __cinit__(self, BucketTable table not None, slots, measures):
        cdef Py_ssize_t k = len(slots), j
        if len(measures) != k:
            raise ValueError("slots and measures differ in length")
        self._idx = <Py_ssize_t*>PyMem_Malloc(max(1, 2 * k) * sizeof(Py_ssize_t))
        if self._idx == NULL:
            raise MemoryError()
        for j in range(k):
            table._slot(slots[j])  # raises IndexError for a slot the table does not have
            self._idx[j] = slots[j]
            self._idx[k + j] = measures[j]
            if self._idx[k + j] < 0:
                raise IndexError("a measure index is negative")
        self._k = k
        self.table, self.slots, self.measures = table, tuple(slots), tuple(measures)

    def __dealloc__(self):
        PyMem_Free(self._idx)

    def reserve(self, tuple demand not None, double now):
        """Take the demand from every bucket or nothing: the levels after, or None."""
        cdef Py_ssize_t k = self._k, j
        cdef _Scratch sc
        cdef double a
        _scratch_open(&sc, k)
        try:
            for j in range(k):  # every Python conversion first: it may run code that grows the table
                sc.amt[j] = _item(demand, self._idx[k + j])
            for j in range(k):
                sc.bs[j] = self.table._slot(self._idx[j])
                a = sc.amt[j]
                sc.amt[j] = a if a < sc.bs[j].capacity else sc.bs[j].capacity
            if _take_all(sc.bs, sc.amt, k, now) != 0.0:
                return None
            return _levels(sc.bs, k, now)
        finally:
            _scratch_close(&sc)

    def settle(self, tuple reserved not None, tuple used not None, double now):
        """Charge what was used minus what was reserved (see BucketTable.settle)."""
        cdef Py_ssize_t k = self._k, j, m
        cdef double r, u
        for j in range(k):
            m = self._idx[k + j]
            r = _item(reserved, m)  # conversions before the bucket pointer (see reserve)
            u = _item(used, m)
            _correct(self.table._slot(self._idx[j]), r, u, now)

    def levels(self, double now):
        return self.table.levels(self.slots, now)


cdef inline double _item(tuple values, Py_ssize_t i) except? -1.0:
    """values[i] as a double; IndexError past the end (bounds checks are off in this module)."""
    if i >= PyTuple_GET_SIZE(values):
        raise IndexError("a measure index is past the end of the demand")
    return values[i]


cdef tuple _levels(Bucket** bs, Py_ssize_t k, double now):
    cdef tuple out = PyTuple_New(k)
    cdef object level
    cdef Py_ssize_t j
    for j in range(k):
        level = _refilled(bs[j], now)
        Py_INCREF(level)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(out, j, level)
    return out


cdef double _take_all(Bucket** bs, const double* amt, Py_ssize_t k, double now) noexcept:
    """Refill every bucket to now, then take every amount or none; 0.0 or the longest wait."""
    cdef Py_ssize_t j
    cdef double level, wait = 0.0, w
    cdef Bucket* b
    for j in range(k):
        b = bs[j]
        level = _refill_to(b, now)
        if level < amt[j]:
            w = INFINITY if (amt[j] > b.capacity or b.refill <= 0.0) else (amt[j] - level) / b.refill
            if w > wait:
                wait = w
    if wait > 0.0:
        return wait
    for j in range(k):
        bs[j].level -= amt[j]
    return 0.0


cdef inline void _correct(Bucket* b, double reserved, double used, double now) noexcept:
    """Settle one bucket: charge used - min(reserved, capacity); a refund is capped at
    capacity, a charge may leave debt, and 0 touches nothing (not even the stamp)."""
    cdef double delta = used - (reserved if reserved < b.capacity else b.capacity)
    cdef double level
    if delta > 0.0:
        b.level = _refill_to(b, now) - delta
    elif delta < 0.0:
        level = _refill_to(b, now) - delta
        b.level = level if level < b.capacity else b.capacity


cdef inline double _refilled(const Bucket* b, double now) noexcept:
    cdef double level
    if now > b.stamp and b.refill > 0.0:
        level = b.level + (now - b.stamp) * b.refill
        return level if level < b.capacity else b.capacity
    return b.level


cdef inline double _refill_to(Bucket* b, double now) noexcept:
    b.level = _refilled(b, now)
    if now > b.stamp:
        b.stamp = now
    return b.level

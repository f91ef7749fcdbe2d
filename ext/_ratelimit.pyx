# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/ratelimit.py`: the x-ratelimit-* headers of an admitted request.

Six headers go out on every limited request. The twin spends most of its time in float
formatting and small tuple building; here each duration is whole milliseconds in a C
integer, written with snprintf into a stack buffer, so the only Python objects made are
the strings and tuples that are returned. Arithmetic follows the twin operation for
operation (ceil below a second, rint above: Python's round), so both agree exactly.
"""
cimport cython
from libc.math cimport ceil, isinf, isnan, rint
from libc.stdio cimport snprintf

__all__ = ["go_duration", "ratelimit_headers"]

cdef double _EXACT_INT = 9007199254740992.0  # 2**53: above this, levels go through Python's int()


@cython.boundscheck(True)  # specs and levels come from Python: index them as Python would
@cython.wraparound(True)
def ratelimit_headers(specs, levels):
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} (see tollway.ext.ratelimit)."""
    cdef list out = []
    cdef tuple spec
    cdef double level, capacity, refill
    for spec in specs:
        level = levels[<Py_ssize_t>spec[0]]
        capacity = spec[4]
        refill = spec[5]
        out.append(spec[1])
        out.append((spec[2], _remaining(level)))
        out.append((spec[3], "0s" if level >= capacity else _duration((capacity - level) / refill)))
    return out


def go_duration(double seconds):
    """A duration as OpenAI writes it (Go's format), like tollway.ext.ratelimit.go_duration."""
    return _duration(seconds)


cdef str _remaining(double level):
    if not level > 0.0:  # as the twin writes it, so a NaN level is "0" in both
        return "0"
    if level < _EXACT_INT:
        return str(<long long>level)
    return str(int(level))


cdef str _duration(double seconds):
    cdef double ms
    if isinf(seconds):
        return "never"
    if isnan(seconds):  # unreachable from a validated config; fail as the twin does, not with garbage
        raise ValueError("cannot convert float NaN to integer")
    if seconds < 1.0:
        ms = ceil(seconds * 1000.0)
        return f"{<long long>ms}ms" if ms > 0.0 else "0s"
    ms = rint(seconds * 1000.0)
    if ms >= _EXACT_INT:
        from tollway.ext.ratelimit import go_duration as pure  # beyond 285,000 years: not worth C
        return pure(seconds)
    return _go_ms(<long long>ms)


cdef str _go_ms(long long ms):
    cdef char buf[64]
    cdef long long hours = ms // 3600000, minutes, frac
    cdef int n
    ms -= hours * 3600000
    minutes = ms // 60000
    ms -= minutes * 60000
    if hours:
        n = snprintf(buf, sizeof(buf), "%lldh%lldm%lld", hours, minutes, ms // 1000)
    elif minutes:
        n = snprintf(buf, sizeof(buf), "%lldm%lld", minutes, ms // 1000)
    else:
        n = snprintf(buf, sizeof(buf), "%lld", ms // 1000)
    frac = ms % 1000
    if frac:
        n += snprintf(buf + n, sizeof(buf) - n, ".%03lld", frac)
        while buf[n - 1] == b'0':
            n -= 1
    buf[n] = b's'
    return buf[:n + 1].decode("ascii")

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `core/jsonscan.py`: the JSON nesting-depth guard (same rules, one C loop)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

__all__ = ["max_depth_exceeded"]

cdef enum:
    QUOTE = 34      # "
    BACKSLASH = 92  # \
    LBRACKET = 91   # [
    RBRACKET = 93   # ]
    LBRACE = 123    # {
    RBRACE = 125    # }


def max_depth_exceeded(body, Py_ssize_t limit):
    """True if `body` nests arrays/objects deeper than `limit` outside JSON strings."""
    cdef bytes data = body if type(body) is bytes else bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if _openers(p, n) <= limit:
        return False  # not enough openers to get that deep, whatever the strings hold
    return _deeper_than(p, n, limit)


cdef Py_ssize_t _openers(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, count = 0
    for i in range(n):
        count += (p[i] == LBRACKET) | (p[i] == LBRACE)
    return count


cdef bint _deeper_than(const unsigned char* p, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    cdef Py_ssize_t i = 0, depth = 0
    cdef unsigned char c
    while i < n:
        c = p[i]
        i += 1
        if c == QUOTE:
            i = _string_end(p, n, i)
        elif c == LBRACKET or c == LBRACE:
            depth += 1
            if depth > limit:
                return True
        elif c == RBRACKET or c == RBRACE:
            depth -= 1
    return False


cdef inline Py_ssize_t _string_end(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Index just past the string whose content starts at `i` (or `n` if unterminated)."""
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == BACKSLASH:
            i += 2  # the escaped byte, whatever it is, cannot end the string
        elif c == QUOTE:
            return i + 1
        else:
            i += 1
    return n

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/jsonscan.py`: the JSON nesting-depth guard and the top-level
duplicate-key finder (same rules as the twin, one C loop each; strings skipped with memchr)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr

__all__ = ["first_duplicate_key", "first_needle", "max_depth_exceeded"]

cdef extern from "string.h" nogil:  # a GNU extension; Python.h defines _GNU_SOURCE
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)

cdef enum:
    QUOTE = 34      # "
    BACKSLASH = 92  # \
    LBRACKET = 91   # [
    RBRACKET = 93   # ]
    LBRACE = 123    # {
    RBRACE = 125    # }
    COLON = 58      # :
    MAX_NAMES = 64  # one bit each in a uint64_t


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
    """Index just past the string whose content starts at `i` (or `n` if unterminated).

    The string ends at the first quote after an even run of backslashes (an odd run escapes
    it: the backslashes pair up left to right). memchr jumps over the text between quotes,
    which is most of a chat body. p[i - 1] is always a quote, so a run never reaches past it."""
    cdef const unsigned char* q
    cdef Py_ssize_t j, k
    while i < n:
        q = <const unsigned char*>memchr(p + i, QUOTE, n - i)
        if q == NULL:
            return n
        j = q - p
        k = j
        while p[k - 1] == BACKSLASH:
            k -= 1
        if (j - k) % 2 == 0:
            return j + 1
        i = j + 1
    return n


def first_duplicate_key(body, tuple names not None):
    """The index in `names` of the first name met a second time as a key of the top-level
    object, scanning `body` in order; -1 if none. A key matches a name after its `\\u00XX`
    escapes (XX < 0x80) are decoded; a key with any other escape matches no name. `names` are
    plain ASCII (no quote, no backslash), at most 64. Raises TypeError, ValueError."""
    cdef bytes data = body if type(body) is bytes else bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i = 0, start, depth = 0, j
    cdef uint64_t seen = 0
    cdef unsigned char c
    _check_names(names)
    while i < n:
        c = p[i]
        i += 1
        if c == QUOTE:
            start = i
            i = _string_end(p, n, i)
            if depth == 1 and _colon_follows(p, n, i):
                j = _name_index(p + start, i - 1 - start, names)
                if j >= 0:
                    if seen & (<uint64_t>1 << j):
                        return j
                    seen |= <uint64_t>1 << j
        elif c == LBRACKET or c == LBRACE:
            depth += 1
        elif c == RBRACKET or c == RBRACE:
            depth -= 1
    return -1


cdef int _check_names(tuple names) except -1:
    if PyTuple_GET_SIZE(names) > MAX_NAMES:
        raise ValueError(f"at most {MAX_NAMES} names, got {PyTuple_GET_SIZE(names)}")
    for name in names:
        if type(name) is not bytes:
            raise TypeError(f"names must be bytes, got {type(name).__name__}")
    return 0


cdef inline bint _colon_follows(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """True if the next byte at or after `i` that is not JSON whitespace is a colon: the
    string just closed is an object key."""
    while i < n and (p[i] == 32 or p[i] == 9 or p[i] == 10 or p[i] == 13):
        i += 1
    return i < n and p[i] == COLON


cdef Py_ssize_t _name_index(const unsigned char* key, Py_ssize_t size, tuple names):
    """The index of the first of `names` that the raw key content `key[:size]` spells, or -1."""
    cdef Py_ssize_t j
    cdef object name
    for j in range(PyTuple_GET_SIZE(names)):
        name = <object>PyTuple_GET_ITEM(names, j)
        if _spells(key, size, <const unsigned char*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)):
            return j
    return -1


cdef bint _spells(const unsigned char* key, Py_ssize_t size, const unsigned char* name, Py_ssize_t length) noexcept nogil:
    """True if the raw key content decodes to `name`: bytes as they are, `\\u00XX` (XX < 0x80)
    as the byte XX, any other escape as no name at all."""
    cdef Py_ssize_t i = 0, at = 0
    cdef int hi, lo
    if size < length:
        return False  # escapes only lengthen a key
    while i < size:
        if at == length:
            return False
        if key[i] != BACKSLASH:
            if key[i] != name[at]:
                return False
            i += 1
        else:
            if size - i < 6 or key[i + 1] != 117 or key[i + 2] != 48 or key[i + 3] != 48:  # "u00"
                return False
            hi, lo = _hex(key[i + 4]), _hex(key[i + 5])
            if hi < 0 or hi > 7 or lo < 0 or hi * 16 + lo != name[at]:
                return False
            i += 6
        at += 1
    return at == length


cdef inline int _hex(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


def first_needle(data, tuple needles):
    """Index of the first of `needles` (bytes) found anywhere in `data`, or -1. The stream
    relay asks this of every chunk, so it is one C loop of memmem calls."""
    cdef bytes hay = data if type(data) is bytes else bytes(data)
    cdef const char* p = PyBytes_AS_STRING(hay)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(hay)
    cdef Py_ssize_t i, count = PyTuple_GET_SIZE(needles)
    cdef object needle
    for i in range(count):
        needle = <object>PyTuple_GET_ITEM(needles, i)
        if type(needle) is not bytes:
            raise TypeError("needles must be bytes")
        if PyBytes_GET_SIZE(needle) == 0 or memmem(p, n, PyBytes_AS_STRING(needle), <size_t>PyBytes_GET_SIZE(needle)) != NULL:
            return i
    return -1

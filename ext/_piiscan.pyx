# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/piiscan.py`: where a PII or secret shape could start, one C pass.

Same rules as the twin (its docstring): each character is read once; a 128-entry table says
which shapes an ASCII character can start, and only there are the few following characters
checked. Anything outside ASCII starts nothing."""
from tollway.ext.piiscan import CARD, EMAIL, IBAN, IP, PHONE, SECRET, SECRET_LITERALS, SHAPES, SSN

__all__ = ["CARD", "EMAIL", "IBAN", "IP", "PHONE", "SECRET", "SECRET_LITERALS", "SHAPES", "SSN", "candidate_starts"]

cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    int PyUnicode_READY(object o) except -1  # (a no-op since 3.12; a legacy string before)
    int PyUnicode_KIND(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void* PyUnicode_DATA(object o)
    Py_UCS4 PyUnicode_READ(int kind, const void* data, Py_ssize_t index) nogil

# The twin's bit values (a test holds them equal).
cdef enum:
    S_EMAIL = 1
    S_PHONE = 2
    S_CARD = 4
    S_IBAN = 8
    S_SSN = 16
    S_IP = 32
    S_SECRET = 64
    S_DIGIT = S_PHONE | S_CARD | S_IBAN | S_SSN | S_IP

cdef struct Text:
    int kind
    const void* data
    Py_ssize_t n

cdef unsigned char STARTS[128]  # ASCII character -> the shapes it may start


cdef void _fill_starts() noexcept:
    cdef int c
    for c in range(128):
        STARTS[c] = 0
    for c in range(48, 58):
        STARTS[c] = S_DIGIT
    STARTS[64] = S_EMAIL  # @
    STARTS[58] = S_IP  # :
    STARTS[43] = S_PHONE  # +
    STARTS[40] = S_PHONE  # (
    for c in b"sAg-e":  # the first characters of SECRET_LITERALS
        STARTS[c] = S_SECRET


_fill_starts()


cdef inline Py_UCS4 _at(const Text* t, Py_ssize_t i) noexcept nogil:
    """The character at i, or 0 outside the text (0 starts and continues no shape)."""
    if i < 0 or i >= t.n:
        return 0
    return PyUnicode_READ(t.kind, t.data, i)


cdef inline bint _digit(Py_UCS4 c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint _upper(Py_UCS4 c) noexcept nogil:
    return 65 <= c <= 90


cdef inline bint _alnum(Py_UCS4 c) noexcept nogil:
    return _digit(c) or _upper(c) or 97 <= c <= 122


cdef inline bint _hex_or_colon(Py_UCS4 c) noexcept nogil:
    return _digit(c) or 65 <= c <= 70 or 97 <= c <= 102 or c == 58


cdef inline bint _digits(const Text* t, Py_ssize_t i, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(i, i + k):
        if not _digit(_at(t, j)):
            return False
    return True


cdef inline Py_ssize_t _run(const Text* t, Py_ssize_t i) noexcept nogil:
    """Digits from i, counted up to 4 (no shape's run is longer than 3)."""
    cdef Py_ssize_t k = 0
    while k < 4 and _digit(_at(t, i + k)):
        k += 1
    return k


cdef inline bint _sep(Py_UCS4 c, Py_UCS4 a, Py_UCS4 b) noexcept nogil:
    return c == a or c == b


cdef bint _ipv4_at(const Text* t, Py_ssize_t j) noexcept nogil:
    """`d{0,2}.d{1,3}.d{1,3}.d` from j (each digit run whole: a longer one cannot backtrack)."""
    cdef Py_ssize_t k = _run(t, j)
    if k > 2 or _at(t, j + k) != 46:
        return False
    j += k + 1
    for _ in range(2):
        k = _run(t, j)
        if k < 1 or k > 3 or _at(t, j + k) != 46:
            return False
        j += k + 1
    return _digit(_at(t, j))


cdef bint _digit_shape(const Text* t, Py_ssize_t q, int shapes) noexcept nogil:
    cdef Py_ssize_t j = q + 1, k
    cdef Py_UCS4 c
    if shapes & S_CARD and _digits(t, j, 3):
        c = _at(t, j + 3)
        if (_sep(c, 32, 45) and _digits(t, j + 4, 3)) or _digits(t, j + 3, 3):
            return True
    if shapes & S_IP and _ipv4_at(t, j):
        return True
    if shapes & S_PHONE and _digits(t, j, 2) and _sep(_at(t, j + 2), 45, 46) and _digits(t, j + 3, 3) \
            and _sep(_at(t, j + 6), 45, 46) and _digits(t, j + 7, 4):
        return True
    if shapes & S_SSN and _digits(t, j, 2) and _sep(_at(t, j + 2), 45, 32) and _digits(t, j + 3, 2) \
            and _sep(_at(t, j + 5), 45, 32) and _digits(t, j + 6, 4):
        return True
    if shapes & S_IBAN and _upper(_at(t, q - 2)) and _upper(_at(t, q - 1)) and _digit(_at(t, j)):
        j += 2 if _at(t, j + 1) == 32 else 1
        for k in range(j, j + 4):
            c = _at(t, k)
            if not (_digit(c) or _upper(c)):
                return False
        return True
    return False


cdef bint _literal(const Text* t, Py_ssize_t q, const char* s) noexcept nogil:
    cdef Py_ssize_t k = 0
    while s[k]:
        if _at(t, q + k) != <unsigned char>s[k]:
            return False
        k += 1
    return True


cdef bint _secret(const Text* t, Py_ssize_t q, Py_UCS4 c) noexcept nogil:
    cdef Py_UCS4 x
    if c == 115:  # s
        return _literal(t, q, b"sk-")
    if c == 65:  # A
        x = _at(t, q + 1)
        return (x == 75 or x == 83) and _literal(t, q + 2, b"IA")
    if c == 103:  # g
        x = _at(t, q + 2)
        return (_literal(t, q, b"gh") and (x == 112 or x == 111 or x == 117 or x == 115 or x == 114)
                and _at(t, q + 3) == 95) or _literal(t, q, b"github_pat_")
    if c == 45:  # -
        return _literal(t, q, b"-----BEGIN ")
    return _literal(t, q, b"eyJ")  # e


cdef bint _starts(const Text* t, Py_ssize_t q, Py_UCS4 c, int on) noexcept nogil:
    if on & S_SECRET:
        return _secret(t, q, c)
    if _digit(c):
        return _digit_shape(t, q, on)
    if c == 64:  # @
        return _alnum(_at(t, q + 1))
    if c == 58:  # :
        return _hex_or_colon(_at(t, q - 1)) and _hex_or_colon(_at(t, q + 1))
    if c == 43:  # +
        return 49 <= _at(t, q + 1) <= 57
    return (50 <= _at(t, q + 1) <= 57 and _digit(_at(t, q + 2)) and _digit(_at(t, q + 3))  # (
            and _at(t, q + 4) == 41)


def candidate_starts(text, Py_ssize_t start, int shapes):
    """Sorted positions >= `start` where a shape of `shapes` could begin (the twin's rules)."""
    cdef Text t
    cdef Py_ssize_t q
    cdef Py_UCS4 c
    cdef int on
    cdef list out = []
    if not PyUnicode_Check(text):  # (a str subclass is a str)
        raise TypeError("text must be str, not %s" % type(text).__name__)
    PyUnicode_READY(text)
    t.kind = PyUnicode_KIND(text)
    t.data = PyUnicode_DATA(text)
    t.n = PyUnicode_GET_LENGTH(text)
    for q in range(max(start, 0), t.n):
        c = PyUnicode_READ(t.kind, t.data, q)
        if c >= 128:
            continue
        on = STARTS[c] & shapes
        if on and _starts(&t, q, c, on):
            out.append(q)
    return out

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/canonjson.py`: a JSON object body as canonical JSON, written while the
body is scanned once, with no Python object per value.

Theory of operation. One recursive descent over the bytes validates the JSON and writes each
value's canonical form into one output buffer: strings re-escaped as msgspec escapes them
(`"`, `\\`, and control characters; everything else as UTF-8), numbers copied when their text
is already what msgspec would write, literals as they are. An object's members are written in
body order, each remembered as (its decoded key, where it sits in the output); at the closing
brace, if the keys were not in order the members are copied back sorted, and two equal keys
send the body to the twin (msgspec keeps the last one; guessing is not worth the code). The
top-level members named in `excluded` are scanned (the body must still be valid) but not kept.

Anything this kernel does not write with certainty is "declined": the whole body goes to the
twin, which decodes it with msgspec and returns the exact answer (or None if it is not a JSON
object). Declined: repeated keys, numbers with an exponent, trailing fraction zeros, more than
15 significant digits or outside 1e-5..1e16 (msgspec switches to exponent notation there),
integers past 18 digits, lone surrogates, invalid UTF-8, nesting past MAX_DEPTH, any body that
is not an object, malformed JSON.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from tollway.ext.canonjson import canonical_object as _twin_canonical

__all__ = ["canonical_object"]

cdef enum:
    MAX_DEPTH = 128  # deeper bodies go to the twin (the gateway refuses them before this anyway)
    MAX_NAMES = 16  # excluded names compared in C
    MAX_DIGITS = 15  # significant digits a double keeps through any decimal text (DBL_DIG)
    MAX_INT_DIGITS = 18  # an int64 prints as it is written
    STACK_BODY = 4096  # bodies up to this size are canonicalised in buffers on the stack
    STACK_MEMBERS = 128
    OK = 0
    DECLINE = -1  # not canonicalised here: the twin decides


cdef struct Buf:
    unsigned char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef struct Member:
    Py_ssize_t key  # offset of the decoded key in Scan.keys
    Py_ssize_t key_len
    Py_ssize_t start  # the member `"key":value` in Scan.out
    Py_ssize_t end


cdef struct Scan:
    const unsigned char* p
    Py_ssize_t n
    Py_ssize_t i
    Buf out  # the canonical JSON
    Buf keys  # decoded keys of the objects open
    Buf tmp  # scratch for reordering
    Member* members  # a stack: the members of the objects open
    Py_ssize_t nmembers
    Py_ssize_t capmembers
    bint heap_members  # members was malloc'd (else it is the entry point's stack array)
    int depth
    const char** names  # the excluded names (UTF-8)
    Py_ssize_t* name_lens
    Py_ssize_t nnames
    bint zero  # top-level temperature is a number equal to 0
    bint seeded  # top-level seed is present and not null


# --- output buffers ---------------------------------------------------------------------
# The canonical form of a body is never longer than the body: whitespace goes, an escape is
# kept or shortened, `-0` loses its sign, members are only dropped or reordered. So `out`,
# `keys` (the decoded keys, each from its own bytes of the body) and `tmp` (a region of `out`)
# are each given the body's length at the start, and a write never checks for room.

cdef inline int _put(Buf* b, const unsigned char* src, Py_ssize_t length) noexcept nogil:
    memcpy(b.data + b.size, src, <size_t>length)
    b.size += length
    return OK


cdef inline int _put1(Buf* b, unsigned char c) noexcept nogil:
    b.data[b.size] = c
    b.size += 1
    return OK


# --- scanning ---------------------------------------------------------------------------

cdef inline void _skip_ws(Scan* s) noexcept nogil:
    cdef unsigned char c
    while s.i < s.n:
        c = s.p[s.i]
        if c != 32 and c != 10 and c != 13 and c != 9:
            return
        s.i += 1


cdef int _value(Scan* s) noexcept nogil:
    """Write the canonical form of the value at s.i (no whitespace before it)."""
    cdef unsigned char c
    if s.i >= s.n:
        return DECLINE
    c = s.p[s.i]
    if c == 34:  # "
        s.i += 1
        return _string(s, NULL)
    if c == 123:  # {
        return _object(s, 0)
    if c == 91:  # [
        return _array(s)
    if c == 116:
        return _literal(s, b"true", 4)
    if c == 102:
        return _literal(s, b"false", 5)
    if c == 110:
        return _literal(s, b"null", 4)
    return _number(s)


cdef int _literal(Scan* s, const char* word, Py_ssize_t length) noexcept nogil:
    if s.n - s.i < length or memcmp(s.p + s.i, word, <size_t>length) != 0:
        return DECLINE
    s.i += length
    return _put(&s.out, <const unsigned char*>word, length)


cdef int _array(Scan* s) noexcept nogil:
    s.i += 1
    s.depth += 1
    if s.depth > MAX_DEPTH or _put1(&s.out, 91) < 0:
        return DECLINE
    _skip_ws(s)
    if s.i < s.n and s.p[s.i] == 93:
        s.i += 1
        s.depth -= 1
        return _put1(&s.out, 93)
    while True:
        if _value(s) < 0:
            return DECLINE
        _skip_ws(s)
        if s.i >= s.n:
            return DECLINE
        if s.p[s.i] == 93:  # ]
            s.i += 1
            s.depth -= 1
            return _put1(&s.out, 93)
        if s.p[s.i] != 44 or _put1(&s.out, 44) < 0:  # ,
            return DECLINE
        s.i += 1
        _skip_ws(s)


cdef int _push_member(Scan* s, Py_ssize_t key, Py_ssize_t key_len, Py_ssize_t start) noexcept nogil:
    cdef Member* grown
    if s.nmembers == s.capmembers:  # past the STACK_MEMBERS on the stack: to the heap
        grown = <Member*>malloc(<size_t>s.capmembers * 2 * sizeof(Member))
        if grown == NULL:
            return DECLINE
        memcpy(grown, s.members, <size_t>s.nmembers * sizeof(Member))
        if s.heap_members:
            free(s.members)
        s.members, s.capmembers, s.heap_members = grown, s.capmembers * 2, True
    s.members[s.nmembers] = Member(key, key_len, start, s.out.size)
    s.nmembers += 1
    return OK


cdef int _object(Scan* s, bint top) noexcept nogil:
    cdef Py_ssize_t base = s.nmembers, keys_base = s.keys.size, kept = 0
    cdef Py_ssize_t before, start, key, key_len, value_at
    s.i += 1
    s.depth += 1
    if s.depth > MAX_DEPTH or _put1(&s.out, 123) < 0:
        return DECLINE
    _skip_ws(s)
    if s.i < s.n and s.p[s.i] == 125:
        s.i += 1
        s.depth -= 1
        return _put1(&s.out, 125)
    while True:
        if s.i >= s.n or s.p[s.i] != 34:
            return DECLINE
        s.i += 1
        before = s.out.size
        if kept and _put1(&s.out, 44) < 0:
            return DECLINE
        start, key = s.out.size, s.keys.size
        if _string(s, &s.keys) < 0:
            return DECLINE
        key_len = s.keys.size - key
        _skip_ws(s)
        if s.i >= s.n or s.p[s.i] != 58 or _put1(&s.out, 58) < 0:  # :
            return DECLINE
        s.i += 1
        _skip_ws(s)
        value_at = s.out.size
        if _value(s) < 0:
            return DECLINE
        if top and _excluded(s, s.keys.data + key, key_len):
            s.out.size, s.keys.size = before, key  # scanned, not kept
        else:
            if top:
                _note_top(s, s.keys.data + key, key_len, s.out.data + value_at, s.out.size - value_at)
            if _push_member(s, key, key_len, start) < 0:
                return DECLINE
            kept += 1
        _skip_ws(s)
        if s.i >= s.n:
            return DECLINE
        if s.p[s.i] == 125:  # }
            s.i += 1
            break
        if s.p[s.i] != 44:
            return DECLINE
        s.i += 1
        _skip_ws(s)
    if _sort_members(s, base) < 0:
        return DECLINE
    s.nmembers, s.keys.size = base, keys_base
    s.depth -= 1
    return _put1(&s.out, 125)


cdef inline int _key_cmp(Scan* s, Member* a, Member* b) noexcept nogil:
    """memcmp order of the decoded UTF-8 keys: code point order, as msgspec sorts str keys."""
    cdef Py_ssize_t shorter = a.key_len if a.key_len < b.key_len else b.key_len
    cdef int c = memcmp(s.keys.data + a.key, s.keys.data + b.key, <size_t>shorter)
    if c:
        return c
    return (a.key_len > b.key_len) - (a.key_len < b.key_len)


cdef int _sort_members(Scan* s, Py_ssize_t base) noexcept nogil:
    """Put the open object's members (s.members[base:], written in body order) in key order in
    s.out; DECLINE on a repeated key."""
    cdef Member* m = s.members + base
    cdef Py_ssize_t count = s.nmembers - base, j, k, region, offset
    cdef Member held
    cdef bint ordered = True
    cdef int c
    for j in range(1, count):
        c = _key_cmp(s, &m[j - 1], &m[j])
        if c == 0:
            return DECLINE
        if c > 0:
            ordered = False
    if ordered:
        return OK
    for j in range(1, count):  # insertion sort: objects are small
        held = m[j]
        k = j
        while k > 0 and _key_cmp(s, &m[k - 1], &held) > 0:
            m[k] = m[k - 1]
            k -= 1
        m[k] = held
    for j in range(1, count):
        if _key_cmp(s, &m[j - 1], &m[j]) == 0:
            return DECLINE
    region = m[0].start  # (the member written first is still m[...] somewhere; find the lowest)
    for j in range(count):
        if m[j].start < region:
            region = m[j].start
    s.tmp.size = 0
    _put(&s.tmp, s.out.data + region, s.out.size - region)
    s.out.size = region
    for j in range(count):
        if j and _put1(&s.out, 44) < 0:
            return DECLINE
        offset = m[j].start - region
        if _put(&s.out, s.tmp.data + offset, m[j].end - m[j].start) < 0:
            return DECLINE
    return OK


cdef bint _excluded(Scan* s, const unsigned char* key, Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(s.nnames):
        if s.name_lens[j] == length and memcmp(s.names[j], key, <size_t>length) == 0:
            return True
    return False


cdef void _note_top(Scan* s, const unsigned char* key, Py_ssize_t key_len, const unsigned char* value,
                    Py_ssize_t length) noexcept nogil:
    """The sampled flag's inputs, from a kept top-level member's canonical value. (A repeated
    key declines the body later, so the first one seen here is the only one.)"""
    if key_len == 11 and memcmp(key, b"temperature", 11) == 0:
        s.zero = ((length == 1 and value[0] == 48) or (length == 3 and memcmp(value, b"0.0", 3) == 0)
                  or (length == 4 and memcmp(value, b"-0.0", 4) == 0))
    elif key_len == 4 and memcmp(key, b"seed", 4) == 0:
        s.seeded = not (length == 4 and memcmp(value, b"null", 4) == 0)


# --- numbers ----------------------------------------------------------------------------

cdef inline bint _digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef int _number(Scan* s) noexcept nogil:
    """Copy a number whose text is what msgspec writes for it: an integer of at most 18 digits
    (`-0` is written `0`), or `I.F` with no exponent, no trailing zero after the first fraction
    digit, at most 15 significant digits and its leading digit between 1e-5 and 1e15 (the
    shortest text of the double it names, in msgspec's fixed notation). Else DECLINE."""
    cdef Py_ssize_t at = s.i, int_at, int_len, frac_at, frac_len = 0, lead = 0, sig
    if at < s.n and s.p[at] == 45:  # -
        at += 1
    int_at = at
    if at >= s.n or not _digit(s.p[at]):
        return DECLINE
    if s.p[at] == 48:
        at += 1
    else:
        while at < s.n and _digit(s.p[at]):
            at += 1
    int_len = at - int_at
    if at < s.n and s.p[at] == 46:  # .
        at += 1
        frac_at = at
        while at < s.n and _digit(s.p[at]):
            at += 1
        frac_len = at - frac_at
        if frac_len == 0:
            return DECLINE
    if at < s.n and (s.p[at] == 101 or s.p[at] == 69):  # e E: msgspec may rewrite the form
        return DECLINE
    if frac_len == 0:
        if int_len > MAX_INT_DIGITS:
            return DECLINE
        if int_len == 1 and s.p[int_at] == 48:  # 0 or -0: the int 0
            s.i = at
            return _put1(&s.out, 48)
    elif frac_len == 1 and s.p[frac_at] == 48:  # I.0: an integral double
        sig = int_len
        while sig > 1 and s.p[int_at + sig - 1] == 48:
            sig -= 1
        if int_len - 1 > 15 or sig > MAX_DIGITS:
            return DECLINE
    else:
        if s.p[at - 1] == 48:  # 0.50 is written 0.5
            return DECLINE
        if s.p[int_at] != 48:
            sig = int_len + frac_len
            if int_len - 1 > 15:
                return DECLINE
        else:
            while s.p[frac_at + lead] == 48:
                lead += 1
            if lead > 4:  # below 1e-5: 1e-6 is written in exponent form
                return DECLINE
            sig = frac_len - lead
        if sig > MAX_DIGITS:
            return DECLINE
    if _put(&s.out, s.p + s.i, at - s.i) < 0:
        return DECLINE
    s.i = at
    return OK


# --- strings ----------------------------------------------------------------------------

cdef inline int _hex4(const unsigned char* p) noexcept nogil:
    cdef int value = 0, j, d
    cdef unsigned char c
    for j in range(4):
        c = p[j]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        value = value * 16 + d
    return value


cdef int _utf8_length(const unsigned char* p, Py_ssize_t left) noexcept nogil:
    """The length of the valid UTF-8 sequence at p (lead byte >= 0x80), or -1: as strict as
    Python's decoder (no overlong forms, no surrogates, nothing past U+10FFFF)."""
    cdef unsigned char c = p[0]
    if 0xC2 <= c <= 0xDF:
        if left >= 2 and (p[1] & 0xC0) == 0x80:
            return 2
        return -1
    if 0xE0 <= c <= 0xEF:
        if left < 3 or (p[1] & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80:
            return -1
        if (c == 0xE0 and p[1] < 0xA0) or (c == 0xED and p[1] >= 0xA0):
            return -1
        return 3
    if 0xF0 <= c <= 0xF4:
        if left < 4 or (p[1] & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80 or (p[3] & 0xC0) != 0x80:
            return -1
        if (c == 0xF0 and p[1] < 0x90) or (c == 0xF4 and p[1] >= 0x90):
            return -1
        return 4
    return -1


cdef int _put_code_point(Scan* s, Buf* decoded, unsigned int cp) noexcept nogil:
    """An escaped code point: canonical (escaped as msgspec escapes it, else UTF-8) into s.out,
    UTF-8 into `decoded` if given."""
    cdef unsigned char utf8[4]
    cdef unsigned char esc[6]
    cdef Py_ssize_t length
    if cp < 0x80:
        utf8[0], length = <unsigned char>cp, 1
    elif cp < 0x800:
        utf8[0], utf8[1], length = 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F), 2
    elif cp < 0x10000:
        utf8[0], utf8[1], utf8[2], length = 0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F), 3
    else:
        utf8[0], utf8[1] = 0xF0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3F)
        utf8[2], utf8[3], length = 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F), 4
    if decoded != NULL and _put(decoded, utf8, length) < 0:
        return DECLINE
    if cp == 34 or cp == 92:
        esc[0], esc[1] = 92, cp
        return _put(&s.out, esc, 2)
    if cp >= 0x20:
        return _put(&s.out, utf8, length)
    esc[0] = 92
    if cp == 8 or cp == 9 or cp == 10 or cp == 12 or cp == 13:
        esc[1] = b"btn?fr"[cp - 8]
        return _put(&s.out, esc, 2)
    esc[1], esc[2], esc[3], esc[4], esc[5] = 117, 48, 48, b"0123456789abcdef"[cp >> 4], b"0123456789abcdef"[cp & 15]
    return _put(&s.out, esc, 6)


cdef inline bint _plain8(uint64_t x) noexcept nogil:
    """True if none of the 8 bytes in `x` needs a look: below 0x20, a quote, a backslash or
    non-ASCII. (A borrow from one byte's subtraction reaches the next only from a byte that is
    caught already, so the test is exact.)"""
    cdef uint64_t ones = 0x0101010101010101ULL
    return ((x - ones * 0x20) | ((x ^ (ones * 0x22)) - ones) | ((x ^ (ones * 0x5C)) - ones) | x) & (ones * 0x80) == 0


cdef int _string(Scan* s, Buf* decoded) noexcept nogil:
    """Write the string whose content starts at s.i as canonical JSON; its decoded UTF-8 also
    into `decoded` if given. Runs of bytes that need no escape are found 8 at a time and copied
    whole: chat text is most of a body."""
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n, i = s.i, run
    cdef unsigned char c = 0
    cdef int length, cp, low
    cdef uint64_t word
    if _put1(&s.out, 34) < 0:
        return DECLINE
    while True:
        run = i
        while True:
            while i + 8 <= n:
                memcpy(&word, p + i, 8)
                if not _plain8(word):
                    break
                i += 8
            while i < n:
                c = p[i]
                if c >= 0x80 or c == 34 or c == 92 or c < 0x20:
                    break
                i += 1
            if i >= n or c < 0x80:
                break
            length = _utf8_length(p + i, n - i)  # valid UTF-8 is copied as it is
            if length < 0:
                return DECLINE
            i += length
        if i > run:
            if _put(&s.out, p + run, i - run) < 0:
                return DECLINE
            if decoded != NULL and _put(decoded, p + run, i - run) < 0:
                return DECLINE
        if i >= n or c < 0x20:
            return DECLINE  # unterminated, or a raw control character
        if c == 34:
            s.i = i + 1
            return _put1(&s.out, 34)
        if i + 1 >= n:
            return DECLINE
        c = p[i + 1]
        i += 2
        if c == 117:  # \uXXXX
            if n - i < 4:
                return DECLINE
            cp = _hex4(p + i)
            i += 4
            if cp < 0 or 0xDC00 <= cp <= 0xDFFF:
                return DECLINE
            if 0xD800 <= cp <= 0xDBFF:  # a pair's high half: its low half must follow
                if n - i < 6 or p[i] != 92 or p[i + 1] != 117:
                    return DECLINE
                low = _hex4(p + i + 2)
                if not 0xDC00 <= low <= 0xDFFF:
                    return DECLINE
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                i += 6
        elif c == 34 or c == 92 or c == 47:  # " \ /
            cp = c
        elif c == 98:
            cp = 8
        elif c == 102:
            cp = 12
        elif c == 110:
            cp = 10
        elif c == 114:
            cp = 13
        elif c == 116:
            cp = 9
        else:
            return DECLINE
        if _put_code_point(s, decoded, <unsigned int>cp) < 0:
            return DECLINE


# --- the entry point --------------------------------------------------------------------

cdef int _scan(Scan* s) noexcept nogil:
    _skip_ws(s)
    if s.i >= s.n or s.p[s.i] != 123:
        return DECLINE  # not an object (or not JSON): the twin says which
    if _object(s, 1) < 0:
        return DECLINE
    _skip_ws(s)
    return OK if s.i == s.n else DECLINE


def canonical_object(body, frozenset excluded not None):
    """(the canonical JSON of the object `body` without its top-level `excluded` members,
    whether its top-level `temperature` is a number equal to 0, whether its top-level `seed` is
    present and not null), or None if `body` is not a JSON object. Same as the twin, always."""
    cdef const char* names[MAX_NAMES]
    cdef Py_ssize_t name_lens[MAX_NAMES]
    cdef unsigned char on_stack[3 * STACK_BODY]
    cdef Member stack_members[STACK_MEMBERS]
    cdef unsigned char* space = on_stack
    cdef Scan s
    cdef Py_ssize_t j = 0, n
    cdef int outcome
    if type(body) is not bytes or len(excluded) > MAX_NAMES:
        return _twin_canonical(body, excluded)
    for name in excluded:
        names[j] = PyUnicode_AsUTF8AndSize(name, &name_lens[j])
        j += 1
    n = PyBytes_GET_SIZE(body)
    if n > STACK_BODY:
        space = <unsigned char*>malloc(<size_t>n * 3)
        if space == NULL:
            return _twin_canonical(body, excluded)
    s.p, s.n, s.i = <const unsigned char*>PyBytes_AS_STRING(body), n, 0
    s.out, s.keys, s.tmp = Buf(space, 0, n), Buf(space + n, 0, n), Buf(space + 2 * n, 0, n)
    s.members, s.nmembers, s.capmembers, s.heap_members = stack_members, 0, STACK_MEMBERS, False
    s.depth = 0
    s.names, s.name_lens, s.nnames = names, name_lens, j
    s.zero, s.seeded = False, False
    try:
        with nogil:
            outcome = _scan(&s)
        if outcome < 0:
            return _twin_canonical(body, excluded)
        return PyBytes_FromStringAndSize(<const char*>s.out.data, s.out.size), s.zero, s.seeded
    finally:
        if space != on_stack:
            free(space)
        if s.heap_members:
            free(s.members)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of `ext/sse.py`: the SSE framer and the OpenAI stream relay.

Same API and the same framing rules as the twin (read its theory of operation first). What
differs is only how: the pending bytes live in one malloc'd buffer; lines are found with
memchr; an event's fields are kept as offsets into that buffer and turned into bytes objects
only when an event is handed out. The relay never builds event objects at all: it forwards
contiguous runs of the buffer, and looks for usage with a byte search over the event's raw
bytes (a hit outside its data lines, which the twin never reads, counts for nothing) before
asking msgspec (through the twin's decoder) for anything.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy, memmove

cdef extern from "string.h" nogil:
    # GNU/BSD extension; Python.h defines _GNU_SOURCE before string.h is included.
    void* memmem(const void* haystack, size_t n, const void* needle, size_t m)

from tollway.ext.sse import (
    DEFAULT_MAX_EVENT_BYTES,
    TEXT_KEYS,
    SSEError,
    Usage,
    event_too_large as _event_too_large_py,
    finished_by as _finished_by,
    streamed_text as _streamed_text_py,
    usage_of_chunk as _usage_of_chunk_py,
)

__all__ = ["SSEError", "SSEEvent", "SSEFramer", "OpenAIStreamRelay", "Usage", "DEFAULT_MAX_EVENT_BYTES", "TEXT_KEYS",
           "text_bound"]

# Module attributes cached as C globals: no dict lookups on the hot path.
cdef object _event_too_large = _event_too_large_py
cdef object _usage_of_chunk = _usage_of_chunk_py
cdef object _streamed_text = _streamed_text_py
cdef bytes _EMPTY = b""

cdef enum:
    LF = 10
    CR = 13
    COLON = 58
    QUOTE = 34
    SPACE = 32
    TAB = 9
    COMMA = 44
    BACKSLASH = 92
    LBRACE = 123
    RBRACE = 125
    LBRACKET = 91
    RBRACKET = 93

cdef Py_ssize_t _KEEP_CAPACITY = 64 * 1024  # an idle buffer bigger than this is shrunk


cdef class SSEEvent:
    """One event: its exact bytes, its ``event:`` type (None if absent) and its joined data."""

    cdef readonly bytes raw
    cdef readonly object event
    cdef readonly bytes data

    def __init__(self, bytes raw, event, bytes data):
        self.raw = raw
        self.event = event
        self.data = data

    def __repr__(self):
        return f"SSEEvent(raw={self.raw!r}, event={self.event!r}, data={self.data!r})"

    def __eq__(self, other):
        cdef SSEEvent o
        if not isinstance(other, SSEEvent):
            return NotImplemented
        o = <SSEEvent>other
        return self.raw == o.raw and self.event == o.event and self.data == o.data

    __hash__ = None


cdef class SSEFramer:
    """Incremental SSE framer: `feed` bytes in any split, get complete `SSEEvent`s back.

    After an `SSEError` the framer's state is undefined: the stream must be abandoned.
    """

    cdef char* buf
    cdef Py_ssize_t length, cap
    cdef Py_ssize_t start   # first byte of the current event
    cdef Py_ssize_t end     # one past the last byte of the event just completed
    cdef Py_ssize_t pos     # start of the next unparsed line
    cdef Py_ssize_t scan    # where the search for the next line end resumes (>= pos)
    cdef Py_ssize_t max_bytes
    # Fields of the current event, as offsets into buf.
    cdef bint has_event
    cdef Py_ssize_t event_start, event_end
    cdef Py_ssize_t* lines  # data line i is buf[lines[2i]:lines[2i+1]]
    cdef Py_ssize_t n_lines, lines_cap

    def __cinit__(self, Py_ssize_t max_event_bytes=DEFAULT_MAX_EVENT_BYTES):
        self.max_bytes = max_event_bytes
        self.lines_cap = 8
        self.lines = <Py_ssize_t*>PyMem_Malloc(2 * self.lines_cap * sizeof(Py_ssize_t))
        if self.lines == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.buf)
        PyMem_Free(self.lines)

    def feed(self, chunk):
        """Add bytes; return the events they complete. Raises SSEError on an oversized event."""
        self._append(chunk)
        cdef list events = []
        while self._next(False):
            events.append(self._event())
        self._compact()
        return events

    def flush(self):
        """End of stream: return the remaining events, including one without its blank line."""
        cdef list events = []
        while self._next(True):
            events.append(self._event())
        if self._tail():
            events.append(self._event())
        self._compact()
        return events

    # --- buffer -------------------------------------------------------------------------

    cdef int _append(self, chunk) except -1:
        cdef bytes data = chunk if type(chunk) is bytes else bytes(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t need = self.length + n
        cdef Py_ssize_t cap
        cdef char* grown
        if need > self.cap:
            cap = max(need, 2 * self.cap, 4096)
            grown = <char*>PyMem_Realloc(self.buf, cap)
            if grown == NULL:
                raise MemoryError()
            self.buf = grown
            self.cap = cap
        memcpy(self.buf + self.length, PyBytes_AS_STRING(data), n)
        self.length = need
        return 0

    cdef int _compact(self) except -1:
        """Drop the bytes of finished events; raise if the pending event is already too big."""
        cdef Py_ssize_t shift = self.start, i
        if shift > 0:
            memmove(self.buf, self.buf + shift, self.length - shift)
            self.length -= shift
            self.pos -= shift
            self.scan -= shift
            self.event_start -= shift
            self.event_end -= shift
            for i in range(2 * self.n_lines):
                self.lines[i] -= shift
            self.start = 0
        if self.length > self.max_bytes:
            raise _event_too_large(self.max_bytes)
        if self.length == 0 and self.cap > _KEEP_CAPACITY:
            PyMem_Free(self.buf)  # one huge event must not pin its buffer for the whole stream
            self.buf = NULL
            self.cap = 0
        return 0

    # --- lines and fields ---------------------------------------------------------------

    cdef inline Py_ssize_t _line_end(self, Py_ssize_t frm):
        """Index of the first \\r or \\n at or after `frm`, or `length` if none."""
        cdef char* b = self.buf
        cdef Py_ssize_t limit = self.length
        cdef char* p
        if frm >= limit:
            return limit
        p = <char*>memchr(b + frm, LF, limit - frm)
        if p != NULL:
            limit = p - b
        p = <char*>memchr(b + frm, CR, limit - frm)
        return p - b if p != NULL else limit

    cdef int _next(self, bint final) except -1:
        """Parse lines until an event completes (return 1: it is buf[start:end]) or the
        buffered bytes run out (return 0)."""
        cdef Py_ssize_t i, after
        cdef char* b = self.buf
        while True:
            i = self._line_end(self.scan)
            if i == self.length:
                self.scan = i
                return 0
            after = i + 1
            if b[i] == CR:
                if after < self.length:
                    if b[after] == LF:
                        after += 1
                elif not final:
                    self.scan = i  # maybe the first half of "\r\n": decide on the next byte
                    return 0
            if i == self.pos:  # blank line: the event is complete
                self.end = after
                self.pos = self.scan = after
                if self.end - self.start > self.max_bytes:
                    raise _event_too_large(self.max_bytes)
                return 1
            self._field(self.pos, i)
            self.pos = self.scan = after

    cdef int _tail(self) except -1:
        """At end of stream: take the unterminated last line; return 1 if an event remains."""
        if self.pos < self.length:
            self._field(self.pos, self.length)
        self.pos = self.scan = self.length
        if self.start == self.length:
            return 0
        self.end = self.length
        if self.end - self.start > self.max_bytes:
            raise _event_too_large(self.max_bytes)
        return 1

    cdef int _field(self, Py_ssize_t s, Py_ssize_t e) except -1:
        cdef char* b = self.buf
        cdef char* colon
        cdef Py_ssize_t name_end, value
        if b[s] == COLON:
            return 0  # a comment: kept in raw only
        colon = <char*>memchr(b + s, COLON, e - s)
        if colon == NULL:
            name_end = value = e
        else:
            name_end = colon - b
            value = name_end + 1
            if value < e and b[value] == SPACE:
                value += 1
        if name_end - s == 4 and memcmp(b + s, b"data", 4) == 0:
            self._add_data_line(value, e)
        elif name_end - s == 5 and memcmp(b + s, b"event", 5) == 0:
            self.has_event = True
            self.event_start = value
            self.event_end = e
        return 0

    cdef int _add_data_line(self, Py_ssize_t s, Py_ssize_t e) except -1:
        cdef Py_ssize_t* grown
        if self.n_lines == self.lines_cap:
            grown = <Py_ssize_t*>PyMem_Realloc(self.lines, 4 * self.lines_cap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self.lines = grown
            self.lines_cap *= 2
        self.lines[2 * self.n_lines] = s
        self.lines[2 * self.n_lines + 1] = e
        self.n_lines += 1
        return 0

    # --- events -------------------------------------------------------------------------

    cdef bytes _data(self):
        """The current event's data lines joined by \\n."""
        cdef Py_ssize_t i, total, s, n
        cdef bytes out
        cdef char* w
        if self.n_lines == 0:
            return _EMPTY
        if self.n_lines == 1:
            return PyBytes_FromStringAndSize(self.buf + self.lines[0], self.lines[1] - self.lines[0])
        total = self.n_lines - 1
        for i in range(self.n_lines):
            total += self.lines[2 * i + 1] - self.lines[2 * i]
        out = PyBytes_FromStringAndSize(NULL, total)
        w = PyBytes_AS_STRING(out)
        for i in range(self.n_lines):
            if i:
                w[0] = LF
                w += 1
            s = self.lines[2 * i]
            n = self.lines[2 * i + 1] - s
            memcpy(w, self.buf + s, n)
            w += n
        return out

    cdef inline bint _is_done(self):
        """True if the current event's data is exactly [DONE]."""
        return (
            self.n_lines == 1
            and self.lines[1] - self.lines[0] == 6
            and memcmp(self.buf + self.lines[0], b"[DONE]", 6) == 0
        )

    cdef inline void _next_event(self):
        self.start = self.end
        self.has_event = False
        self.n_lines = 0

    cdef SSEEvent _event(self):
        """Build the completed event and move on to the next."""
        cdef SSEEvent ev = SSEEvent.__new__(SSEEvent)
        ev.raw = PyBytes_FromStringAndSize(self.buf + self.start, self.end - self.start)
        if self.has_event:
            ev.event = PyBytes_FromStringAndSize(self.buf + self.event_start, self.event_end - self.event_start)
        else:
            ev.event = None
        ev.data = self._data()
        self._next_event()
        return ev


cdef inline Py_ssize_t _blanks(const char* b, Py_ssize_t i, Py_ssize_t n):
    while i < n and (b[i] == SPACE or b[i] == TAB):
        i += 1
    return i


cdef inline Py_ssize_t _null_usage_end(const char* b, Py_ssize_t key, Py_ssize_t n):
    """C version of tollway.ext.sse._null_usage_end."""
    cdef Py_ssize_t i
    if n - key < 7 or memcmp(b + key, b'"usage"', 7) != 0:
        return -1
    i = _blanks(b, key + 7, n)
    if i < n and b[i] == COLON:
        i = _blanks(b, i + 1, n)
        if n - i >= 4 and memcmp(b + i, b"null", 4) == 0:
            return i + 4
    return -1


cdef inline Py_ssize_t _skip_string(const char* b, Py_ssize_t i, Py_ssize_t n):
    """C version of tollway.ext.sse._skip_string."""
    i += 1
    while i < n and b[i] != QUOTE:
        i += 2 if b[i] == BACKSLASH else 1
    return i + 1


cdef bint _depth_at(const char* b, Py_ssize_t i, Py_ssize_t last, Py_ssize_t n, Py_ssize_t* depth):
    """C version of tollway.ext.sse._depth_at: False where that returns None."""
    cdef Py_ssize_t d = 0
    cdef char c
    while i < last:
        c = b[i]
        if c == QUOTE:
            i = _skip_string(b, i, n)
            continue
        if c == LBRACE or c == LBRACKET:
            d += 1
        elif c == RBRACE or c == RBRACKET:
            d -= 1
        i += 1
    depth[0] = d
    return i == last


cdef Py_ssize_t _null_usage_at_depth(const char* b, Py_ssize_t key, Py_ssize_t value_end, Py_ssize_t last,
                                     Py_ssize_t n, Py_ssize_t target, Py_ssize_t* found_end):
    """C version of tollway.ext.sse._null_usage_at_depth: the key's offset (-1: none), its
    value's end in found_end."""
    cdef Py_ssize_t depth = 0, i = value_end, found = key if target == 0 else -1, end
    cdef char c
    found_end[0] = value_end
    while i < last:
        c = b[i]
        if c == QUOTE:
            end = _null_usage_end(b, i, n) if found < 0 and depth == target else -1
            if end >= 0:
                found, found_end[0], i = i, end, end
            else:
                i = _skip_string(b, i, n)
            continue
        if c == LBRACE or c == LBRACKET:
            depth += 1
        elif c == RBRACE or c == RBRACKET:
            depth -= 1
            if depth < target:  # a closer left it: it was not at the level of the last "}"
                found = -1
        i += 1
    return found


cdef void _null_usage_cut(const char* b, Py_ssize_t n, Py_ssize_t key, Py_ssize_t value_end,
                          Py_ssize_t* cut_start, Py_ssize_t* cut_end):
    """C version of tollway.ext.sse.null_usage_span from its first null usage (at `key`): linear
    in the event however many "usage" keys it nests. cut_start -1 if there is none."""
    cdef Py_ssize_t last = n - 1, target = 0, before
    cut_start[0] = -1
    while last >= 0 and (b[last] == LF or b[last] == CR or b[last] == SPACE or b[last] == TAB):
        last -= 1
    if last < 0 or b[last] != RBRACE or not _depth_at(b, value_end, last, n, &target):
        return
    key = _null_usage_at_depth(b, key, value_end, last, n, target, &value_end)
    if key < 0:
        return
    before = key - 1  # the comma before it (a later member), else the comma and blanks after it
    while before >= 0 and (b[before] == SPACE or b[before] == TAB):
        before -= 1
    if before >= 0 and b[before] == COMMA:
        cut_start[0], cut_end[0] = before, value_end
    else:
        before = _blanks(b, value_end, n)
        cut_start[0] = key
        cut_end[0] = _blanks(b, before + 1, n) if before < n and b[before] == COMMA else value_end


cdef Py_ssize_t _data_line(SSEFramer fr, Py_ssize_t key):
    """Which data line of the current event holds the ``"usage"`` at buf[key:key+7] (-1: none,
    it is in a comment, an id, an event name). Asked only for a non-null usage: not per chunk."""
    cdef Py_ssize_t k
    for k in range(fr.n_lines):
        if fr.lines[2 * k] <= key and key + 7 <= fr.lines[2 * k + 1]:
            return k
    return -1


cdef bint _usage_or_cut(SSEFramer fr, bint want_cut, Py_ssize_t* cut_start, Py_ssize_t* cut_end):
    """C version of tollway.ext.sse.may_carry_usage (a superset filter; the decoder decides) and,
    with `want_cut`, of tollway.ext.sse.null_usage_span, from the same search over the current
    event's raw bytes (one per event on the hot path): True if a non-null usage may be in its
    data; else the cut of the top-level null usage in cut_start:cut_end, offsets in the event
    (cut_start -1 if there is none). As the twin reads only the data, a ``"usage"`` outside the
    data lines says nothing, and one that ends a data line but the last may take its colon from
    the next (the twin's data joins them with ``\n``)."""
    cdef const char* b = fr.buf + fr.start
    cdef Py_ssize_t n = fr.end - fr.start
    cdef const char* end = b + n
    cdef const char* p = b
    cdef Py_ssize_t key, i, line, first_key = -1, first_end = -1
    cut_start[0] = -1
    while True:
        p = <const char*>memmem(p, end - p, b'"usage"', 7)
        if p == NULL:
            break
        key = p - b
        i = _blanks(b, key + 7, n)
        if i < n and b[i] == COLON:
            i = _blanks(b, i + 1, n)
            if n - i >= 4 and memcmp(b + i, b"null", 4) == 0:
                if first_key < 0:
                    first_key, first_end = key, i + 4
            elif _data_line(fr, fr.start + key) >= 0:
                return True
        elif i < n and (b[i] == LF or b[i] == CR):
            line = _data_line(fr, fr.start + key)
            if 0 <= line < fr.n_lines - 1:
                return True
        p += 1
    if want_cut and first_key >= 0:
        _null_usage_cut(b, n, first_key, first_end, cut_start, cut_end)
    return False


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* Offsets of the quotes in b[i:n], 16 bytes a step; for a line with no backslash, where
       quotes alternate open and close. Writes up to cap offsets; returns how many there are
       (more than cap: the caller falls back to its byte loop). */
    static Py_ssize_t tollway_quotes(const char* b, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* out, Py_ssize_t cap) {
        Py_ssize_t count = 0, j;
        const __m128i quote = _mm_set1_epi8('"');
        for (j = i; j + 16 <= n; j += 16) {
            unsigned mask = (unsigned)_mm_movemask_epi8(
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(b + j)), quote));
            while (mask) {
                if (count >= cap) return cap + 1;
                out[count++] = j + __builtin_ctz(mask);
                mask &= mask - 1;
            }
        }
        for (; j < n; j++) {
            if (b[j] == '"') {
                if (count >= cap) return cap + 1;
                out[count++] = j;
            }
        }
        return count;
    }
    #define TOLLWAY_HAVE_QUOTES 1
    #else
    static Py_ssize_t tollway_quotes(const char* b, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* out, Py_ssize_t cap) {
        return cap + 1;  /* no SIMD here: the byte loop */
    }
    #define TOLLWAY_HAVE_QUOTES 0
    #endif
    """
    Py_ssize_t tollway_quotes(const char* b, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* out, Py_ssize_t cap)


cdef enum:
    _MAX_QUOTES = 256  # per line for the SIMD path; a longer line takes the byte loop


cdef Py_ssize_t _line_bound_fast(const char* b, Py_ssize_t i, Py_ssize_t n):
    """_line_bound for a line with no backslash (most are): the quotes, found 16 bytes a step,
    pair up as strings. -1 when the line does not fit this path."""
    cdef Py_ssize_t quotes[_MAX_QUOTES]
    cdef Py_ssize_t count = tollway_quotes(b, i, n, quotes, _MAX_QUOTES), k, s, e, j, total = 0, value_at = -1
    if count > _MAX_QUOTES:
        return -1
    k = 0
    while k < count:
        s = quotes[k] + 1
        if k + 1 >= count:  # unterminated: the rest of the line
            if quotes[k] == value_at:
                total += n - s
            break
        e = quotes[k + 1]
        if quotes[k] == value_at:
            total += e - s
        value_at = -1
        j = _after_colon(b, e + 1, n)
        if j >= 0 and _text_key(b + s, e - s):
            value_at = j
        k += 2
    return total


cdef bint _text_key(const char* k, Py_ssize_t n):
    """A TEXT_KEYS name (a test holds the two lists equal). By length first: most keys of a
    chunk (id, object, model, index, ...) are ruled out without a compare."""
    if n == 4:
        return memcmp(k, b"text", 4) == 0
    if n == 5:
        return memcmp(k, b"delta", 5) == 0
    if n == 7:
        return memcmp(k, b"content", 7) == 0 or memcmp(k, b"refusal", 7) == 0
    if n == 8:
        return memcmp(k, b"thinking", 8) == 0
    if n == 9:
        return memcmp(k, b"arguments", 9) == 0 or memcmp(k, b"reasoning", 9) == 0
    if n == 12:
        return memcmp(k, b"partial_json", 12) == 0
    if n == 17:
        return memcmp(k, b"reasoning_content", 17) == 0
    return False


cdef Py_ssize_t _line_bound(const char* b, Py_ssize_t i, Py_ssize_t n):
    """One byte loop, no calls: a chunk's strings are short (ids, keys, a token's text), where
    memchr's setup costs more than it skips (measured: ~12 instructions a byte either way)."""
    cdef Py_ssize_t total = 0, value_at = -1, s, e
    cdef char c
    while i < n:
        if b[i] != QUOTE:
            i += 1
            continue
        s = e = i + 1
        while e < n:  # to the closing quote; a backslash takes the next byte along (a dangling one ends it)
            c = b[e]
            if c == QUOTE or (c == BACKSLASH and e + 1 >= n):
                break
            e += 2 if c == BACKSLASH else 1
        if i == value_at:
            total += e - s
        value_at = -1
        if e >= n or b[e] != QUOTE:  # unterminated: the line is not JSON, nothing more to find
            break
        i = _after_colon(b, e + 1, n)
        if i < 0:  # not a key: go on after the string
            i = e + 1
        elif _text_key(b + s, e - s) or memchr(b + s, BACKSLASH, e - s) != NULL:  # (an escape could spell one)
            value_at = i
    return total


cdef inline Py_ssize_t _after_colon(const char* b, Py_ssize_t j, Py_ssize_t n):
    """Where the value starts if a colon follows position `j` (whitespace around it skipped): the
    string before `j` was a key. Else -1."""
    while j < n and (b[j] == SPACE or b[j] == TAB or b[j] == CR):
        j += 1
    if j >= n or b[j] != COLON:
        return -1
    j += 1
    while j < n and (b[j] == SPACE or b[j] == TAB or b[j] == CR):
        j += 1
    return j


def text_bound(chunk):
    """See tollway.ext.sse.text_bound."""
    cdef bytes data = chunk if type(chunk) is bytes else bytes(chunk)
    cdef const char* b = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), total = 0, at, end, line
    cdef const char* p = <const char*>memmem(b, n, b"data:", 5)
    while p != NULL:
        at = p - b
        p = <const char*>memchr(b + at, LF, n - at)
        end = p - b if p != NULL else n
        line = -1
        if memchr(b + at + 5, BACKSLASH, end - at - 5) == NULL:  # (no escape: quotes pair up)
            line = _line_bound_fast(b, at + 5, end)
        total += line if line >= 0 else _line_bound(b, at + 5, end)
        p = <const char*>memmem(b + end, n - end, b"data:", 5) if p != NULL else NULL
    return total


cdef class OpenAIStreamRelay:
    """Relays an OpenAI chat/completions SSE stream byte for byte, watching for usage.

    Concatenated over a stream, `feed` + `flush` output equals the input, minus, when
    `drop_usage_chunk` (the client did not ask for usage), the usage-only chunk and every other
    chunk's top-level ``"usage": null`` member. Output lags input at most to the last event
    boundary.
    """

    cdef SSEFramer _framer
    cdef Py_ssize_t _cut_start, _cut_end  # of the event _forward said to cut (2), buffer offsets
    cdef bint _drop
    cdef list _sent
    cdef readonly object usage
    cdef readonly bint done

    def __init__(self, bint drop_usage_chunk, Py_ssize_t max_event_bytes=DEFAULT_MAX_EVENT_BYTES):
        self._framer = SSEFramer(max_event_bytes)
        self._drop = drop_usage_chunk
        self._sent = []
        self.usage = None
        self.done = False

    def feed(self, chunk):
        """Bytes to forward now. Raises SSEError on an oversized event."""
        self._framer._append(chunk)
        return self._relay(False)

    def flush(self):
        """End of stream: the remaining bytes to forward."""
        return self._relay(True)

    def streamed_text(self):
        """Text generated so far (see tollway.ext.sse.streamed_text); for counting tokens without usage."""
        return _streamed_text(_EMPTY.join(self._sent))

    def finished(self):
        """See tollway.ext.sse.OpenAIStreamRelay.finished (once per stream: no C needed)."""
        return self.done or _finished_by(self._sent)

    cdef bytes _relay(self, bint final):
        """Forward every completed event; the forwarded bytes are runs of the buffer. When an
        event is dropped or cut, the runs are copied into one scratch buffer (no object per run)."""
        cdef SSEFramer fr = self._framer
        cdef Py_ssize_t run_start = fr.start, run_end, w = 0
        cdef char* scratch = NULL  # allocated at the first drop or cut: the output can only shrink
        cdef bytes out
        cdef int action
        try:
            while fr._next(final) or (final and fr._tail()):
                action = self._forward(fr)
                if action != 1:  # the run ends before the dropped event, or before the cut
                    if scratch == NULL:
                        scratch = <char*>PyMem_Malloc(fr.length - run_start + 1)
                        if scratch == NULL:
                            raise MemoryError()
                    run_end = fr.start if action == 0 else self._cut_start
                    memcpy(scratch + w, fr.buf + run_start, run_end - run_start)
                    w += run_end - run_start
                    run_start = fr.end if action == 0 else self._cut_end
                fr._next_event()
            if scratch == NULL:
                out = PyBytes_FromStringAndSize(fr.buf + run_start, fr.start - run_start)
            else:
                memcpy(scratch + w, fr.buf + run_start, fr.start - run_start)
                out = PyBytes_FromStringAndSize(scratch, w + fr.start - run_start)
        finally:
            PyMem_Free(scratch)
        fr._compact()
        if PyBytes_GET_SIZE(out):
            self._sent.append(out)
        return out

    cdef int _forward(self, SSEFramer fr) except -1:
        """Note [DONE] and usage; return 1 to forward the event, 0 to drop it (the usage-only
        chunk the client did not ask for), 2 to cut _cut_start:_cut_end out of it (its null usage)."""
        cdef Py_ssize_t start, cut_end
        if fr._is_done():
            self.done = True
            return 1
        if not _usage_or_cut(fr, self._drop, &start, &cut_end):
            if start >= 0:
                self._cut_start, self._cut_end = fr.start + start, fr.start + cut_end
                return 2
            return 1
        usage, usage_only = _usage_of_chunk(fr._data())
        if usage is None:
            return 1
        self.usage = usage
        return 0 if usage_only and self._drop else 1

"""Server-sent events: an incremental framer and the OpenAI stream relay (pure-Python twin).

Theory of operation
-------------------
An SSE stream is a sequence of lines (ended by ``\\n``, ``\\r\\n`` or a lone ``\\r``); a blank
line ends an event. `SSEFramer` eats bytes in any split and returns each *complete* event with
its exact original bytes (`raw`, terminating blank line included), so a relay can forward
events without re-encoding them. Within an event, ``event:`` sets the event type, ``data:``
lines are joined by ``\\n``, a leading ``:`` marks a comment, and every other field (``id``,
``retry``, unknown names) is kept only in `raw`. Unlike a browser, the framer also returns
blocks that carry no data (comment-only blocks, stray blank lines), because their bytes must
reach the client too.

One subtlety drives the state: a ``\\r`` at the very end of the buffered bytes may be a line
end on its own or the first half of ``\\r\\n``; the framer waits for the next byte (or
`flush`) before deciding, so every split of the input yields byte-identical events.

`OpenAIStreamRelay` frames an OpenAI chat/completions stream, forwards each event's raw bytes,
records the usage object when one passes, notes ``data: [DONE]``, and, when the client did not
ask for usage (the gateway added ``stream_options.include_usage``), takes back what that added:
the usage-only chunk, and the ``"usage": null`` member OpenAI then puts in every other chunk
(cut out of the event's bytes, see `null_usage_span`: nothing is re-encoded). Finding usage is
a byte search first; JSON is decoded only for events that may carry a non-null usage.

`ext/_sse.pyx` is the compiled twin of this module; both share `SSEError`, the usage types
and the lazy `streamed_text` decoding defined here.
"""
from __future__ import annotations

import re

import msgspec

from tollway.ext.usage import OpenAIUsage, Usage, from_openai

__all__ = ["SSEError", "SSEEvent", "SSEFramer", "OpenAIStreamRelay", "Usage", "DEFAULT_MAX_EVENT_BYTES", "TEXT_KEYS",
           "text_bound"]

DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024


class SSEError(ValueError):
    """The stream broke a framing limit (an event larger than the configured maximum)."""


def event_too_large(limit: int) -> SSEError:
    """The one error both framers raise for an oversized event."""
    return SSEError(f"SSE event larger than {limit} bytes")


class SSEEvent(msgspec.Struct, gc=False):
    """One event: its exact bytes, its ``event:`` type (None if absent) and its joined data."""

    raw: bytes
    event: bytes | None
    data: bytes


# A line and its terminator; a lone "\r" at the end of the buffer is decided later.
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


class SSEFramer:
    """Incremental SSE framer: `feed` bytes in any split, get complete `SSEEvent`s back.

    After an `SSEError` the framer's state is undefined: the stream must be abandoned.
    """

    __slots__ = ("_buf", "_pos", "_event", "_data", "_max")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()  # bytes of the current, incomplete event
        self._pos = 0  # start of the next unparsed line in _buf
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events they complete. Raises SSEError on an oversized event."""
        self._buf += chunk
        return self._drain(final=False)

    def flush(self) -> list[SSEEvent]:
        """End of stream: return the remaining events, including one without its blank line."""
        events = self._drain(final=True)
        if self._pos < len(self._buf):
            self._field(bytes(self._buf[self._pos :]))
        if self._buf:
            events.append(self._dispatch(len(self._buf)))
        self._buf.clear()
        self._pos = 0
        return events

    def _drain(self, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf = self._buf
        start = 0  # start of the current event
        while (m := _LINE.match(buf, self._pos)) is not None:
            if not final and m.end() == len(buf) and m.group(2) == b"\r":
                break  # maybe the first half of "\r\n": wait for the next byte
            self._pos = m.end()
            line = m.group(1)
            if line:
                self._field(line)
            else:
                events.append(self._dispatch(self._pos, start))
                start = self._pos
        del buf[:start]
        self._pos -= start
        if len(buf) > self._max:
            raise event_too_large(self._max)
        return events

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment: kept in raw only
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value

    def _dispatch(self, end: int, start: int = 0) -> SSEEvent:
        if end - start > self._max:
            raise event_too_large(self._max)
        event = SSEEvent(bytes(self._buf[start:end]), self._event, b"\n".join(self._data))
        self._event = None
        self._data = []
        return event


# ---------------------------------------------------------------------------------------------
# Usage detection, shared by both relays.

_USAGE_KEY = b'"usage"'
_BLANKS = b" \t"


def may_carry_usage(data: bytes) -> bool:
    """True unless every ``"usage"`` in `data` (an event's data: its data lines joined by
    ``\n``, never its comments or other fields) is provably not a non-null usage member.

    OpenAI puts ``"usage":null`` in every chunk when include_usage is on, so a plain substring
    test would decode every chunk. A ``"usage"`` that is followed (on the same line, after
    blanks) by ``:`` and then ``null`` is skipped; any other ``"usage"`` key makes this True,
    and so does one that ends a data line (its colon may start the next: ``\n`` is JSON's
    whitespace). A ``"usage"`` inside a JSON string cannot match: its quotes would be escaped.
    """
    pos = data.find(_USAGE_KEY)
    while pos >= 0:
        i = _skip_blanks(data, pos + len(_USAGE_KEY))
        if i < len(data) and data[i] == 0x0A:  # "\n": the key ends a data line, the decoder decides
            return True
        if i < len(data) and data[i] == 0x3A:  # ":" makes it a key
            i = _skip_blanks(data, i + 1)
            if not data.startswith(b"null", i):
                return True
        pos = data.find(_USAGE_KEY, pos + 1)
    return False


def _skip_blanks(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in _BLANKS:
        i += 1
    return i


def _skip_blanks_back(data: bytes, i: int) -> int:
    """The index of the last non-blank byte before `i` (-1 if none)."""
    i -= 1
    while i >= 0 and data[i] in _BLANKS:
        i -= 1
    return i


_NULL = b"null"
_LINE_END = b"\r\n \t"


def null_usage_span(raw: bytes) -> tuple[int, int]:
    """Where the top-level ``"usage": null`` member of one event's bytes is, with the comma and
    blanks that go with it, as (start, end); (-1, -1) if there is none.

    Cutting raw[start:end] out leaves the bytes the object would have had without the member:
    ``{"a": 1, "usage": null}`` -> ``{"a": 1}``, ``{"usage": null, "a": 1}`` -> ``{"a": 1}``.
    A member is top-level when the bytes after it close exactly one object more than they open
    and nothing but line ends and blanks follows; any other ``"usage"`` key is left alone.

    Linear in the event, whatever its number of ``"usage"`` keys (a hostile upstream may nest
    thousands): one scan from the first null usage finds how deep the event's last ``}`` is
    relative to it, a second picks the null usage at that depth that no closer leaves before it.
    """
    key = raw.find(_USAGE_KEY)
    while key >= 0 and (value_end := _null_usage_end(raw, key)) < 0:
        key = raw.find(_USAGE_KEY, key + 1)
    if key < 0:
        return -1, -1
    last = len(raw.rstrip(_LINE_END)) - 1  # the event's last byte but line ends and blanks
    if raw[last] != 0x7D:  # "}"
        return -1, -1
    target = _depth_at(raw, value_end, last)
    if target is None:
        return -1, -1
    found = _null_usage_at_depth(raw, key, value_end, last, target)
    return (-1, -1) if found is None else _member_span(raw, *found)


def _null_usage_end(raw: bytes, key: int) -> int:
    """If a ``"usage"`` key whose value is null starts at `key`: where that null ends; else -1."""
    if not raw.startswith(_USAGE_KEY, key):
        return -1
    i = _skip_blanks(raw, key + len(_USAGE_KEY))
    if i < len(raw) and raw[i] == 0x3A:  # ":"
        i = _skip_blanks(raw, i + 1)
        if raw.startswith(_NULL, i):
            return i + len(_NULL)
    return -1


def _skip_string(raw: bytes, i: int) -> int:
    """Past the string whose opening quote is at `i` (escapes honoured; the end if unterminated)."""
    i += 1
    while i < len(raw) and raw[i] != 0x22:
        i += 2 if raw[i] == 0x5C else 1
    return i + 1


def _depth_at(raw: bytes, i: int, last: int) -> int | None:
    """How many more objects/arrays are open at `last` than at `i` (negative: fewer), scanning
    from `i` with strings skipped; None if `last` falls inside a string."""
    depth = 0
    while i < last:
        c = raw[i]
        if c == 0x22:
            i = _skip_string(raw, i)
            continue
        if c in (0x7B, 0x5B):  # { [
            depth += 1
        elif c in (0x7D, 0x5D):  # } ]
            depth -= 1
        i += 1
    return depth if i == last else None


def _null_usage_at_depth(raw: bytes, key: int, value_end: int, last: int, target: int) -> tuple[int, int] | None:
    """The first null usage, from the one at `key`, that sits at depth `target` (as `_depth_at`
    counts) with no closer taking the depth below `target` between it and `last`: the one whose
    first unmatched closer is the `}` at `last`. As (key, value_end)."""
    found = (key, value_end) if target == 0 else None
    depth, i = 0, value_end
    while i < last:
        c = raw[i]
        if c == 0x22:
            end = _null_usage_end(raw, i) if found is None and depth == target else -1
            if end >= 0:
                found, i = (i, end), end
            else:
                i = _skip_string(raw, i)
            continue
        if c in (0x7B, 0x5B):
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
            if depth < target:  # a closer left it: it was not at the level of the last "}"
                found = None
        i += 1
    return found


def _member_span(raw: bytes, key: int, value_end: int) -> tuple[int, int]:
    """The bytes to cut for the member from `key` to `value_end`: the comma before it (a later
    member), else the comma and blanks after it (the first member), else the member alone."""
    before = _skip_blanks_back(raw, key)
    if before >= 0 and raw[before] == 0x2C:  # ","
        return before, value_end
    after = _skip_blanks(raw, value_end)
    if after < len(raw) and raw[after] == 0x2C:
        return key, _skip_blanks(raw, after + 1)
    return key, value_end


class _UsageChunk(msgspec.Struct):
    usage: OpenAIUsage | None = None
    choices: list[msgspec.Raw] | None = None


_decode_usage_chunk = msgspec.json.Decoder(_UsageChunk).decode


def usage_of_chunk(data: bytes) -> tuple[Usage | None, bool]:
    """Decode one chunk's usage: (usage or None, whether it is the usage-only chunk).

    The usage-only chunk has a non-null usage and an empty choices list. Data that is not a
    JSON object of the expected shape (an upstream error event, say) carries no usage.
    """
    try:
        chunk = _decode_usage_chunk(data)
    except msgspec.DecodeError:
        return None, False
    if chunk.usage is None:
        return None, False
    return from_openai(chunk.usage), chunk.choices == []


# ---------------------------------------------------------------------------------------------
# Streamed text, decoded lazily from the forwarded bytes.


class _Function(msgspec.Struct):
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None  # a thinking model's reasoning: output tokens too
    reasoning: str | None = None  # its other name (OpenRouter, Groq, newer vLLM)
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _TextChunk(msgspec.Struct):
    choices: list[_Choice] | None = None


_decode_text_chunk = msgspec.json.Decoder(_TextChunk).decode


# What says a chat stream came to its end (besides `[DONE]`): a choice's finish_reason with a
# value (`"finish_reason": "stop"`, not null), or an error event, which the client's SDK raises.
# A quote inside generated text is escaped (`\"`), and a newline too (`\n`), so text that
# spells either out never matches.
_ENDED = re.compile(rb'"finish_reason"[ \t\r\n]*:[ \t\r\n]*"|^data:[ ]?\{[ \t\r\n]*"error"[ \t\r\n]*:', re.M)
FINISH_EVENTS = 3  # the finish chunk, the usage chunk after it, and one more


def finished_by(sent: list[bytes]) -> bool:
    """Whether the last events of these forwarded pieces (each a run of whole events) hold a
    choice's finish chunk or an error event: the pieces are read from the end until they hold
    FINISH_EVENTS events, once per stream, at its end. Whole events, whatever their size."""
    tail: list[bytes] = []
    events = 0
    for piece in reversed(sent):
        tail.append(piece)
        events += piece.count(b"\ndata:") + piece.startswith(b"data:")  # (a raw newline only ends lines)
        if events >= FINISH_EVENTS:
            break
    return _ENDED.search(b"".join(reversed(tail))) is not None


def streamed_text(stream: bytes) -> str:
    """The generated text in a chat/completions SSE stream: reasoning (``reasoning_content``
    or ``reasoning``), content, refusal, legacy ``text`` and tool-call arguments of every chunk,
    in order; the pieces `tollway.core.accounting.stream_text.chunk_texts` and
    `completion_text` count. Events that are not such chunks are skipped.
    """
    framer = SSEFramer(max_event_bytes=max(len(stream), 1))
    parts: list[str] = []
    for event in framer.feed(stream) + framer.flush():
        if event.data and event.data != b"[DONE]":
            _collect_text(event.data, parts)
    return "".join(parts)


def _collect_text(data: bytes, parts: list[str]) -> None:
    try:
        chunk = _decode_text_chunk(data)
    except msgspec.DecodeError:
        return  # not a completion chunk (e.g. an error event): it carries no generated text
    for choice in chunk.choices or ():
        if choice.text:
            parts.append(choice.text)
        delta = choice.delta
        if delta is None:
            continue
        # One of the reasoning's two names: a server renaming the field may send both, the same text.
        for text in (delta.reasoning_content or delta.reasoning, delta.content, delta.refusal):
            if text:
                parts.append(text)
        for call in delta.tool_calls or ():
            if call.function is not None and call.function.arguments:
                parts.append(call.function.arguments)


# ---------------------------------------------------------------------------------------------
# A bound of the streamed text, without decoding.

# The keys whose string values tollway.core.accounting.stream_text.chunk_texts reads (at their
# own places in each client shape; `text_bound` takes them at any depth: a superset).
TEXT_KEYS = (b"content", b"refusal", b"reasoning_content", b"reasoning", b"arguments", b"text", b"partial_json",
             b"thinking", b"delta")
_TEXT_KEYS = frozenset(TEXT_KEYS)
# One JSON string (possibly unterminated) with the blanks, colon and blanks after it.
_STRING = re.compile(rb'"((?:[^"\\]++|\\.)*+)("?)[ \t\r]*+(:?)[ \t\r]*+', re.DOTALL)


def text_bound(chunk: bytes) -> int:
    """An upper bound of the UTF-8 bytes of the text pieces `chunk_texts` finds in `chunk`
    (whole SSE events), with no decoding: the raw length of every string value of a TEXT_KEYS
    key (or of a key with an escape, which could spell one) on each line `chunk_texts` reads.

    Why it bounds: `chunk_texts` reads text only from a line that is valid JSON, where a string
    scan finds exactly the real keys and strings; its pieces are values of those keys; and a
    JSON string is never shorter raw than its UTF-8 (an escape is at least as long as what it
    stands for). Lines are found as `chunk_texts` finds them: from each ``data:``, to the next LF.
    """
    total = 0
    at = chunk.find(b"data:")
    while at >= 0:
        end = chunk.find(b"\n", at)
        total += _line_bound(chunk, at + 5, end if end >= 0 else len(chunk))
        at = chunk.find(b"data:", end) if end >= 0 else -1
    return total


def _line_bound(chunk: bytes, start: int, stop: int) -> int:
    total = 0
    value_at = -1  # where the value of a text key starts, if it is a string
    for match in _STRING.finditer(chunk, start, stop):
        if match.start() == value_at:
            total += len(match[1])
        value_at = -1
        key = match[1]
        if match[2] and match[3] and (key in _TEXT_KEYS or b"\\" in key):
            value_at = match.end()
    return total


class OpenAIStreamRelay:
    """Relays an OpenAI chat/completions SSE stream byte for byte, watching for usage.

    Concatenated over a stream, `feed` + `flush` output equals the input, minus, when
    `drop_usage_chunk` (the client did not ask for usage), the usage-only chunk and every other
    chunk's top-level ``"usage": null`` member. Output lags input at most to the last event
    boundary.
    """

    __slots__ = ("_framer", "_drop", "_sent", "usage", "done")

    def __init__(self, drop_usage_chunk: bool, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._framer = SSEFramer(max_event_bytes)
        self._drop = drop_usage_chunk
        self._sent: list[bytes] = []  # forwarded bytes, decoded only if streamed_text is asked
        self.usage: Usage | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now. Raises SSEError on an oversized event."""
        return self._relay(self._framer.feed(chunk))

    def flush(self) -> bytes:
        """End of stream: the remaining bytes to forward."""
        return self._relay(self._framer.flush())

    def streamed_text(self) -> str:
        """Text generated so far (see `streamed_text`); for counting tokens without usage."""
        return streamed_text(b"".join(self._sent))

    def finished(self) -> bool:
        """At the end of the stream: whether the answer came whole. `[DONE]` came, or (an
        upstream that never sends it) a choice's finish chunk is among the last events."""
        return self.done or finished_by(self._sent)

    def _relay(self, events: list[SSEEvent]) -> bytes:
        out = b"".join([raw for event in events if (raw := self._forward(event))])
        if out:
            self._sent.append(out)
        return out

    def _forward(self, event: SSEEvent) -> bytes:
        """The event's bytes to send: as they came, without their null usage, or none."""
        data = event.data
        if data == b"[DONE]":
            self.done = True
        elif may_carry_usage(data):
            usage, usage_only = usage_of_chunk(data)
            if usage is not None:
                self.usage = usage
                return b"" if usage_only and self._drop else event.raw
        elif self._drop:
            start, end = null_usage_span(event.raw)
            if start >= 0:
                return event.raw[:start] + event.raw[end:]
        return event.raw

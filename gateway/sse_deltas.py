"""The streamed deltas in a relayed chunk's SSE events, for the per-chunk hooks (plugins'
`on_chunk`, guardrails on streamed output): one parser, so both see the same fields.

`events(out)` splits a chunk (whole SSE events) into `Event`s with their data's JSON object
parsed, by the framing rules the relay and the clients follow (CR, LF or CRLF line ends, data
lines joined); a hook changes the object in place and `Event.encoded()` re-encodes it as one
data line. An event whose data a client would read but that is not JSON is `unreadable`: a hook
that must see every delta (an output guardrail) ends the stream on it.
`joined(events)` puts the chunk back together. `deltas(obj)` yields the text and tool-call
argument deltas of one event: OpenAI chat (`choices[].delta.content`,
`.tool_calls[].function.arguments`) and Anthropic messages (`text_delta`, `input_json_delta`),
and for the guardrails a model's reasoning too (chat `reasoning_content`/`reasoning`, Anthropic
`thinking_delta`).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

_LINE_END = re.compile(rb"\r\n|\r|\n")  # as the relay's SSEFramer (tollway.ext.sse) and the SDKs read lines
_decode = msgspec.json.decode
_encode = msgspec.json.encode

TEXT = "text"  # a delta's kind: answer text ...
ARGUMENTS = "arguments"  # ... or a tool call's (partial JSON) arguments
THINKING = "thinking"  # ... or an Anthropic thinking block's text (a side text: `deltas(obj, side=True)`)
# A chat choice's other text the client reads, as the `tool` of `deltas(obj, side=True)`
# (negative: apart from its content, -1, and its tool calls, 0 and up). A model's reasoning has
# two names: `reasoning_content` (DeepSeek, the gateway's translations) and `reasoning` (vLLM
# 0.11+, which sends both in one delta for now; other OpenAI-compatible servers): each is its own
# text, as a client reads whichever it knows.
SIDE_FIELDS = {-2: "reasoning_content", -3: "refusal", -4: "reasoning"}
REASONING_FIELDS = {tool: name for tool, name in SIDE_FIELDS.items() if name in ("reasoning_content", "reasoning")}


@dataclass(slots=True)
class Event:
    raw: bytes  # the event as it came, without its separator
    sep: bytes  # the line end and blank line after it (b"" for a trailing part)
    obj: Any = None  # its data's JSON object, or None (no data, `[DONE]`, not an object, not JSON)
    unreadable: bool = False  # it has data that is neither `[DONE]` nor JSON: a client reads what a hook could not
    before: bytes = b""  # whole events a hook inserts before this one (with their separators)
    changed: bool = False  # the hook changed `obj`: re-encode it

    def encoded(self) -> bytes:
        if not self.changed:
            return self.before + self.raw + self.sep
        return self.before + _reencoded(self.raw, _encode(self.obj)) + self.sep


def _reencoded(raw: bytes, data: bytes) -> bytes:
    """`raw` with its data lines replaced by one carrying `data` (its other lines, and its line
    ends, as they were)."""
    lines = _LINE_END.split(raw)
    eol = m.group() if (m := _LINE_END.search(raw)) else b"\n"
    kept, put = [], False
    for line in lines:
        if _field(line)[0] != b"data":
            kept.append(line)
        elif not put:
            kept.append(b"data: " + data)
            put = True
    return eol.join(kept)


def _field(line: bytes) -> tuple[bytes, bytes]:
    """(name, value) of one line, by the SSE rules: `name: value` (one space dropped), a line
    without a colon is a name alone, a comment (`:...`) has no name."""
    name, colon, value = line.partition(b":")
    return name, value[1:] if colon and value.startswith(b" ") else value


def events(out: bytes) -> list[Event]:
    """The events of `out` (whole events), split as the relay's framer and the clients split
    them: lines end with CRLF, LF or CR; a blank line ends an event; its `data:` lines are
    joined with LF."""
    found = []
    start = pos = 0  # the event's first byte; the next line's
    content_end = 0  # where the event's last non-blank line ends
    for m in _LINE_END.finditer(out):
        if m.start() == pos:  # a blank line: the event ends
            found.append(_event(out[start:content_end], out[content_end:m.end()]))
            start = content_end = m.end()
        else:
            content_end = m.start()
        pos = m.end()
    if start < len(out):
        found.append(_event(out[start:], b""))
    return found


def _event(raw: bytes, sep: bytes) -> Event:
    ev = Event(raw, sep)
    data = [value for name, value in map(_field, _LINE_END.split(raw)) if name == b"data"]
    if not data:
        return ev
    payload = b"\n".join(data).strip()
    if payload in (b"", b"[DONE]"):
        return ev
    try:
        obj = _decode(payload)
    except (msgspec.DecodeError, RecursionError):
        ev.unreadable = True
        return ev
    ev.obj = obj if isinstance(obj, dict) else None
    return ev


def joined(found: list[Event]) -> bytes:
    return b"".join(ev.encoded() for ev in found)


def deltas(obj: Any, side: bool = False) -> Iterator[tuple[dict[str, Any], str, str, int, int]]:
    """(holder, field, kind, index, tool) for every delta of one event, `holder[field]` being
    its text (possibly absent or empty): kind TEXT or ARGUMENTS; index the choice's (OpenAI) or
    the content block's (Anthropic); tool the OpenAI tool call's index (-1: none). `side`: a
    chat choice's reasoning and refusal text too (tool: their SIDE_FIELDS key), which the
    guardrails scan but plugins' on_chunk (answer text) is not given, and likewise an Anthropic
    `thinking_delta` (kind THINKING)."""
    if not isinstance(obj, dict):
        return
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            yield delta, "content", TEXT, index, -1
            if side:
                for tool, name in SIDE_FIELDS.items():
                    yield delta, name, TEXT, index, tool
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        tool = call.get("index", 0)  # (a negative one would share the choice's text keys)
                        yield fn, "arguments", ARGUMENTS, index, tool if isinstance(tool, int) and tool >= 0 else 0
    elif obj.get("type") == "content_block_delta" and isinstance(obj.get("delta"), dict):
        delta = obj["delta"]
        index = obj.get("index", 0)
        index = index if isinstance(index, int) else 0
        kind = delta.get("type")
        if kind == "text_delta":
            yield delta, "text", TEXT, index, -1
        elif kind == "thinking_delta":
            if side:
                yield delta, "thinking", THINKING, index, -1
        else:
            yield delta, "partial_json", ARGUMENTS, index, -1

"""The streamed deltas in a relayed chunk's SSE events, for the per-chunk hooks (plugins'
`on_chunk`, guardrails on streamed output): one parser, so both see the same fields.

`events(out)` splits a chunk (whole SSE events) into `Event`s with the first `data:` line's JSON
object parsed; a hook changes the object in place and `Event.encoded()` re-encodes that line.
`joined(events)` puts the chunk back together. `deltas(obj)` yields the text and tool-call
argument deltas of one event: OpenAI chat (`choices[].delta.content`,
`.tool_calls[].function.arguments`) and Anthropic messages (`text_delta`, `input_json_delta`).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

_EVENT_END = re.compile(rb"\r?\n\r?\n")
_decode = msgspec.json.decode
_encode = msgspec.json.encode

TEXT = "text"  # a delta's kind: answer text ...
ARGUMENTS = "arguments"  # ... or a tool call's (partial JSON) arguments
# A chat choice's other text the client reads, as the `tool` of `deltas(obj, side=True)`
# (negative: apart from its content, -1, and its tool calls, 0 and up).
SIDE_FIELDS = {-2: "reasoning_content", -3: "refusal"}


@dataclass(slots=True)
class Event:
    raw: bytes  # the event as it came, without its separator
    sep: bytes  # the blank line after it (b"" for a trailing part)
    obj: Any = None  # its data line's JSON object, or None (no data line, `[DONE]`, not JSON)
    line: int = -1  # that line's index in raw.split(b"\n")
    before: bytes = b""  # whole events a hook inserts before this one (with their separators)
    changed: bool = False  # the hook changed `obj`: re-encode it

    def encoded(self) -> bytes:
        if not self.changed:
            return self.before + self.raw + self.sep
        lines = self.raw.split(b"\n")
        old = lines[self.line]
        lines[self.line] = b"data: " + _encode(self.obj) + (b"\r" if old.endswith(b"\r") else b"")
        return self.before + b"\n".join(lines) + self.sep


def events(out: bytes) -> list[Event]:
    parts = _EVENT_END.split(out)
    seps = _EVENT_END.findall(out)
    found = []
    for i, part in enumerate(parts):
        ev = Event(part, seps[i] if i < len(seps) else b"")
        for j, line in enumerate(part.split(b"\n")):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload.startswith(b"{"):
                try:
                    ev.obj, ev.line = _decode(payload), j
                except msgspec.DecodeError:
                    pass
            break
        found.append(ev)
    return found


def joined(found: list[Event]) -> bytes:
    return b"".join(ev.encoded() for ev in found)


def deltas(obj: Any, side: bool = False) -> Iterator[tuple[dict[str, Any], str, str, int, int]]:
    """(holder, field, kind, index, tool) for every delta of one event, `holder[field]` being
    its text (possibly absent or empty): kind TEXT or ARGUMENTS; index the choice's (OpenAI) or
    the content block's (Anthropic); tool the OpenAI tool call's index (-1: none). `side`: a
    chat choice's reasoning and refusal text too (tool: their SIDE_FIELDS key), which the
    guardrails scan but plugins' on_chunk (answer text) is not given."""
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
        if delta.get("type") == "text_delta":
            yield delta, "text", TEXT, index, -1
        else:
            yield delta, "partial_json", ARGUMENTS, index, -1

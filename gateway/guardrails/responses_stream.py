"""Output guardrails on a streamed Responses API answer (`POST /v1/responses`, `stream: true`).

Theory of operation. The deltas are scanned as chat deltas are, with one scanner per guardrail
and per text part (`output_index`, `content_index`), reasoning summary part (`output_index`,
`summary_index`) or function or custom tool call (`output_index`): `response.output_text.delta`,
`response.refusal.delta`, `response.reasoning_summary_text.delta`,
`response.function_call_arguments.delta` and `response.custom_tool_call_input.delta` carry the
text, and what the scanners emit (masked, or the text before a finding for `block`) replaces
the delta.

Unlike chat, the stream then repeats the whole text: in `response.output_text.done` (`text`),
`response.function_call_arguments.done` (`arguments`), `response.custom_tool_call_input.done`
(`input`), `response.content_part.done` (`part`), `response.output_item.done` (`item`) and the
final `response.completed` (`response.output`). Those must not carry the original, so each is
rewritten from what was emitted for its part:
the held tail is flushed at the part's `.done` event (as one more delta event before it, the
later events' `sequence_number`s moved up by one), and every repeated text becomes the emitted
text. A text the stream repeats without having sent it as deltas is scanned whole (masked, or
blocked). `block` raises: the proxy ends the stream with the Responses `error` event
(`ResponsesStreamRelay.error_event`).

A `json_schema` guardrail checks each `message` item at its `response.output_item.done` (or, if
that never came, at the response's end: `response.completed`, `.incomplete`, `.failed`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from tollway.gateway.guardrails.schema import item_answer

if TYPE_CHECKING:
    from tollway.gateway.guardrails.hooks import GuardrailSet, GuardrailState
    from tollway.gateway.sse_deltas import Event

Key = tuple[int, int]  # (output_index, content_index or summary_index), -1 for a function call's arguments
_DELTAS = {"response.output_text.delta": False, "response.function_call_arguments.delta": True,  # → arguments?
           "response.custom_tool_call_input.delta": True,  # (a freeform tool's input: its arguments)
           "response.refusal.delta": False, "response.reasoning_summary_text.delta": False,
           "response.reasoning_text.delta": False}
_JSON_DELTAS = frozenset(("response.function_call_arguments.delta",))  # (a custom tool's input is free text)
_DONES = {"response.output_text.done": "text", "response.function_call_arguments.done": "arguments",
          "response.custom_tool_call_input.done": "input",
          "response.refusal.done": "refusal", "response.reasoning_summary_text.done": "text",
          "response.reasoning_text.done": "text"}
_DELTA_OF = {done: done.removesuffix(".done") + ".delta" for done in _DONES}  # (the event a held tail goes out as)
_CALL_DONES = frozenset(done for done, delta in _DELTA_OF.items() if _DELTAS[delta])  # a tool call's: key (at, -1)
_CALL_INPUT = {"function_call": "arguments", "custom_tool_call": "input"}  # a tool call item's text, by its type
# A part's text field, by its type (a message's, a reasoning item's content and summary)
_PART_TEXT = {"output_text": "text", "refusal": "refusal", "summary_text": "text", "reasoning_text": "text"}
_ENDS = frozenset(("response.completed", "response.incomplete", "response.failed"))
# Events that show a part before its deltas (normally empty): a text there is scanned, but the
# deltas that follow are the part's text, not a continuation of it.
_OPENINGS = frozenset(("response.created", "response.in_progress", "response.queued", "response.output_item.added",
                       "response.content_part.added", "response.reasoning_summary_part.added"))
_encode = msgspec.json.encode


@dataclass(slots=True)
class ResponsesState:
    emitted: dict[Key, list[str]] = field(default_factory=dict)  # the text sent for each part so far
    shift: int = 0  # events the gateway inserted: later sequence numbers move up by this
    checked: set[int] = field(default_factory=set)  # output items the json_schema check has seen


def _key(obj: dict[str, Any], arguments: bool) -> Key | None:
    at = obj.get("output_index")
    part = -1 if arguments else obj.get("summary_index", obj.get("content_index", 0))
    return (at, part) if isinstance(at, int) and isinstance(part, int) else None


def rewrite(guards: GuardrailSet, state: GuardrailState, rs: ResponsesState, found: list[Event]) -> None:
    """Scan and rewrite one chunk's events in place (`Event.changed`, `Event.before`). Raises
    the guardrail's GatewayError for `block`."""
    for ev in found:
        obj = ev.obj
        if not isinstance(obj, dict):
            continue
        if rs.shift and isinstance(obj.get("sequence_number"), int):
            obj["sequence_number"] += rs.shift
            ev.changed = True
        kind = obj.get("type")
        record = kind not in _OPENINGS
        if kind in _DELTAS:
            key, text = _key(obj, _DELTAS[kind]), obj.get("delta")
            if key is not None and isinstance(text, str) and text:
                new = guards.feed_text(state, key, text, json=kind in _JSON_DELTAS)
                rs.emitted.setdefault(key, []).append(new)
                if new != text:
                    obj["delta"], ev.changed = new, True
            continue
        if kind in _DONES:
            key = _key(obj, kind in _CALL_DONES)
            if key is not None:
                _flush(guards, state, rs, key, ev, _DELTA_OF[kind])
                ev.changed |= _settle(guards, state, rs, key, obj, _DONES[kind])
        part = obj.get("part")
        if isinstance(part, dict) and part.get("type") in _PART_TEXT and (key := _key(obj, False)) is not None:
            ev.changed |= _settle(guards, state, rs, key, part, _PART_TEXT[part["type"]], record)
        item = obj.get("item")
        if isinstance(item, dict) and isinstance(obj.get("output_index"), int):
            ev.changed |= _settle_item(guards, state, rs, obj["output_index"], item, record)
            if kind == "response.output_item.done":
                _check(guards, state, rs, obj["output_index"], item)
        response = obj.get("response")
        output = response.get("output") if isinstance(response, dict) else None
        if isinstance(output, list):
            for at, item in enumerate(output):
                if isinstance(item, dict):
                    ev.changed |= _settle_item(guards, state, rs, at, item, record)
                    if kind in _ENDS:  # an item whose output_item.done never came
                        _check(guards, state, rs, at, item)


def _check(guards: GuardrailSet, state: GuardrailState, rs: ResponsesState, at: int, item: dict[str, Any]) -> None:
    """The json_schema check of one ended output item (once)."""
    if state.schema is None or at in rs.checked:
        return
    rs.checked.add(at)
    text = item_answer(item)
    if text is not None:
        guards.check_answer(state, text)


def _flush(guards: GuardrailSet, state: GuardrailState, rs: ResponsesState, key: Key, ev: Event, kind: str) -> None:
    """A part's text ended: its held tail goes out as one more delta event (`kind`) before `ev`."""
    tail = guards.finish_text(state, key)
    if not tail:
        return
    rs.emitted.setdefault(key, []).append(tail)
    obj = ev.obj
    added: dict[str, Any] = {"type": kind}
    for name in ("sequence_number", "item_id", "output_index", "content_index", "summary_index"):
        if name in obj:
            added[name] = obj[name]
    added["delta"] = tail
    if kind == "response.output_text.delta":
        added["logprobs"] = []
    ev.before += b"event: " + added["type"].encode() + b"\ndata: " + _encode(added) + b"\n\n"
    if isinstance(obj.get("sequence_number"), int):
        obj["sequence_number"] += 1
        rs.shift += 1
    ev.changed = True


def _settle(guards: GuardrailSet, state: GuardrailState, rs: ResponsesState, key: Key,
            holder: dict[str, Any], name: str, record: bool = True) -> bool:
    """`holder[name]`, a repeated whole text, made what was emitted for `key` (or, never sent
    as deltas, scanned whole now, and taken as the part's text if `record`); True if it changed."""
    text = holder.get(name)
    if not isinstance(text, str):
        return False
    sent = rs.emitted.get(key)
    if sent is None:
        guards.apply_rules(state, state.output, [(holder, name)], 502)
        if record:
            rs.emitted[key] = [holder[name]]
        return holder[name] != text
    if key[1] in state.live.get(key[0], ()):  # a part whose `.done` never came: its tail too
        sent.append(guards.finish_text(state, key))
    new = "".join(sent)
    if len(sent) > 1:
        sent[:] = [new]
    holder[name] = new
    return new != text


def _settle_item(guards: GuardrailSet, state: GuardrailState, rs: ResponsesState, at: int, item: dict[str, Any],
                 record: bool = True) -> bool:
    name = _CALL_INPUT.get(str(item.get("type")))
    if name is not None:
        return _settle(guards, state, rs, (at, -1), item, name, record)
    changed = False
    for parts in (item.get("content"), item.get("summary")):  # a message's parts, a reasoning item's summary
        for index, part in enumerate(parts if isinstance(parts, list) else ()):
            if isinstance(part, dict) and part.get("type") in _PART_TEXT:
                changed |= _settle(guards, state, rs, (at, index), part, _PART_TEXT[part["type"]], record)
    return changed

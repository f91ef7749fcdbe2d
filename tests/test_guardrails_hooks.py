"""The guardrail hooks without a gateway (tollway.gateway.guardrails): where the text is in each
API's body, stream chunks with several choices, a stream that ends without finish_reason, a
regex guardrail across chunk boundaries, and the plugins' SSE parsing shared with them."""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from tollway.core.config import Guardrail
from tollway.core.errors import GatewayError
from tollway.gateway import sse_deltas
from tollway.gateway.guardrails.hooks import GuardrailSet, GuardrailState
from tollway.gateway.guardrails.text import input_slots, output_slots

CARD = "4111 1111 1111 1111"


def _texts(api: str, body: Any) -> list[str]:
    return [holder[key] for holder, key in input_slots(api, body)]


def test_input_slots_per_api() -> None:
    assert _texts("completions", {"prompt": ["a", "b"]}) == ["a", "b"]
    assert _texts("embeddings", {"input": "a"}) == ["a"]
    assert _texts("embeddings", {"input": [[1, 2, 3]]}) == []  # token arrays are not text
    assert _texts("responses", {"instructions": "i", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "t"}]},
        {"type": "function_call", "arguments": "{\"a\": 1}"},
        {"type": "function_call_output", "output": "o"}]}) == ["i", "t", "{\"a\": 1}", "o"]
    assert _texts("messages", {"system": [{"type": "text", "text": "s"}], "messages": [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": [{"type": "tool_use", "input": {"q": ["x", {"y": "z"}]}}]},
        {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "r"}]}]}]}) == \
        ["s", "u", "x", "z", "r"]


def test_output_slots() -> None:
    body = {"choices": [{"message": {"content": "c", "tool_calls": [{"function": {"arguments": "a"}}]}}]}
    assert [h[k] for h, k in output_slots(body)] == ["c", "a"]
    assert [h[k] for h, k in output_slots({"type": "message", "content": [{"type": "text", "text": "t"}]})] == ["t"]


def _set(**spec: Any) -> GuardrailSet:
    return GuardrailSet([Guardrail(**{"name": "g", "type": "pii", "action": "mask", **spec})])


def _ex(guards: GuardrailSet) -> Any:
    return SimpleNamespace(guardrails=GuardrailState(guards.rules))


def _chunk(deltas: list[tuple[int, str]], finish: bool = False) -> bytes:
    choices = [{"index": i, "delta": {"content": t}, "finish_reason": "stop" if finish else None} for i, t in deltas]
    return b"data: " + json.dumps({"id": "c", "model": "m", "choices": choices}).encode() + b"\n\n"


def _text_by_choice(out: list[bytes]) -> dict[int, str]:
    got: dict[int, str] = {}
    for ev in sse_deltas.events(b"".join(out)):
        for holder, name, kind, index, _tool in sse_deltas.deltas(ev.obj):
            if kind == sse_deltas.TEXT and isinstance(holder.get(name), str):
                got[index] = got.get(index, "") + holder[name]
    return got


def test_two_choices_are_scanned_apart_and_flushed_at_finish() -> None:
    guards = _set()
    ex = _ex(guards)
    a, b = f"a {CARD} end", f"b {CARD}"
    out = [guards.on_chunk(ex, _chunk([(0, a[i:i + 2]), (1, b[i:i + 2])])) for i in range(0, len(a), 2)]
    out.append(guards.on_chunk(ex, _chunk([(0, ""), (1, "")], finish=True)))
    assert _text_by_choice(out) == {0: "a <CREDIT_CARD> end", 1: "b <CREDIT_CARD>"}
    assert ex.guardrails.counts == {"g": {"credit_card": 2}}


def test_a_stream_without_finish_reason_is_flushed_before_done() -> None:
    guards = _set()
    ex = _ex(guards)
    out = [guards.on_chunk(ex, _chunk([(0, "call 555-")])), guards.on_chunk(ex, _chunk([(0, "123-4567")])),
           guards.on_chunk(ex, b"data: [DONE]\n\n")]
    assert _text_by_choice(out) == {0: "call <PHONE>"}
    assert out[-1].endswith(b"data: [DONE]\n\n")


def test_block_on_a_stream_raises_the_policy_error() -> None:
    guards = _set(action="block", detectors=["credit_card"])
    ex = _ex(guards)
    guards.on_chunk(ex, _chunk([(0, "card 4111 1111 ")]))
    with pytest.raises(GatewayError) as info:
        guards.on_chunk(ex, _chunk([(0, "1111 1111 done")]))
    assert info.value.code == "content_policy_violation" and info.value.status == 502
    assert info.value.message == "blocked by guardrail 'g' (credit_card)"


def test_regex_guardrail_across_chunk_boundaries() -> None:
    guards = GuardrailSet([Guardrail(name="r", type="regex", deny=["(?i)project\\s+bluebird"], action="mask")])
    ex = _ex(guards)
    text = "the Project Bluebird plan and project  BLUEBIRD again"
    out = [guards.on_chunk(ex, _chunk([(0, text[i:i + 3])])) for i in range(0, len(text), 3)]
    out.append(guards.on_chunk(ex, _chunk([(0, "")], finish=True)))
    assert _text_by_choice(out) == {0: "the <REGEX> plan and <REGEX> again"}
    assert ex.guardrails.counts == {"r": {"regex": 2}}


def test_anthropic_block_stop_gets_the_tail_as_a_delta_before_it() -> None:
    guards = _set()
    ex = _ex(guards)
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"mail a@example.com"}}\n\n'
    stop = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    out = [guards.on_chunk(ex, delta), guards.on_chunk(ex, stop)]
    assert _text_by_choice(out) == {0: "mail <EMAIL>"}
    assert out[-1].endswith(stop)


def test_sse_events_round_trip_untouched() -> None:
    raw = b"event: x\r\ndata: {\"a\": 1}\r\n\r\ndata: [DONE]\n\n: comment\n\npartial"
    assert sse_deltas.joined(sse_deltas.events(raw)) == raw


def test_streamed_tool_call_arguments_are_masked_per_tool_call() -> None:
    guards = _set()
    ex = _ex(guards)
    args = json.dumps({"card": CARD})

    def chunk(piece: str, finish: bool = False) -> bytes:
        delta: dict[str, Any] = {"tool_calls": [{"index": 1, "function": {"arguments": piece}}]} if piece else {}
        return b"data: " + json.dumps({"id": "c", "choices": [
            {"index": 0, "delta": delta, "finish_reason": "tool_calls" if finish else None}]}).encode() + b"\n\n"

    out = [guards.on_chunk(ex, chunk(args[i:i + 4])) for i in range(0, len(args), 4)]
    out.append(guards.on_chunk(ex, chunk("", finish=True)))
    got = ""
    for ev in sse_deltas.events(b"".join(out)):
        for holder, name, kind, _index, tool in sse_deltas.deltas(ev.obj):
            if kind == sse_deltas.ARGUMENTS:
                assert tool == 1
                got += holder[name]
    assert json.loads(got) == {"card": "<CREDIT_CARD>"}


def test_anthropic_input_json_delta_tail_keeps_its_kind() -> None:
    guards = _set()
    ex = _ex(guards)
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"to\\": \\"a@example.com"}}\n\n'
    stop = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n'
    out = b"".join([guards.on_chunk(ex, delta), guards.on_chunk(ex, stop)])
    got = "".join(h[n] for ev in sse_deltas.events(out) for h, n, _k, _i, _t in sse_deltas.deltas(ev.obj))
    assert got == '{"to": "<EMAIL>'
    assert b'"type":"input_json_delta","partial_json":"' in out


def test_legacy_completions_stream_text_is_masked_and_flushed() -> None:
    guards = _set()
    ex = _ex(guards)
    text = f"card {CARD}"

    def chunk(piece: str, finish: bool = False) -> bytes:
        return b"data: " + json.dumps({"id": "c", "object": "text_completion", "choices": [
            {"index": 0, "text": piece, "finish_reason": "stop" if finish else None}]}).encode() + b"\n\n"

    out = [guards.on_chunk(ex, chunk(text[i:i + 3])) for i in range(0, len(text), 3)]
    out.append(guards.on_chunk(ex, chunk("", finish=True)))
    got = "".join(c["text"] for ev in sse_deltas.events(b"".join(out)) if ev.obj for c in ev.obj["choices"])
    assert got == "card <CREDIT_CARD>"

"""The guardrail hooks without a gateway (tollway.gateway.guardrails): where the text is in each
API's body, stream chunks with several choices, a stream that ends without finish_reason, a
regex guardrail across chunk boundaries, and the plugins' SSE parsing shared with them; the
json_schema guardrail on chat and Responses answers; the Responses API's stream events."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from tollway.core.config import Guardrail
from tollway.core.errors import GatewayError
from tollway.gateway import sse_deltas
from tollway.gateway.guardrails import hooks
from tollway.gateway.guardrails.hooks import GuardrailSet, GuardrailState
from tollway.gateway.guardrails.responses_stream import ResponsesState
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


def test_input_slots_of_text_documents_output_parts_and_suffix() -> None:
    # These were not scanned: a card in them reached the upstream past an input guardrail.
    assert _texts("messages", {"messages": [{"role": "user", "content": [
        {"type": "document", "title": "t", "context": "c", "source": {"type": "text", "data": "d"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "p"}]}},
        {"type": "document", "source": {"type": "base64", "data": "JVBERi0="}}]}]}) == ["t", "c", "d", "p"]
    assert _texts("responses", {"input": [{"type": "function_call_output", "output": [
        {"type": "input_text", "text": "o"}, {"type": "input_image", "image_url": "u"}]}]}) == ["o"]
    assert _texts("completions", {"prompt": "a", "suffix": "s"}) == ["a", "s"]
    body: Any = {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": CARD}}]}]}
    guards = _set(name="m", apply_to=["input"])
    guards.apply_rule(GuardrailState(()), guards.rules[0], input_slots("messages", body), 400)
    assert body["messages"][0]["content"][0]["source"]["data"] == "<CREDIT_CARD>"


def test_tool_call_arguments_are_decoded_once_for_every_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each rule decoded (and, masking, re-encoded) every slot's arguments again: N rules, N decodes.
    decoded: list[str] = []
    json_of = hooks._json_of
    monkeypatch.setattr(hooks, "_json_of", lambda text: decoded.append(text) or json_of(text))
    guards = GuardrailSet([Guardrail(name="pii", type="pii", action="mask"),
                           Guardrail(name="log", type="pii", action="log"),
                           Guardrail(name="words", type="regex", action="mask", deny=["bluebird"])])
    args = json.dumps({"to": "a@example.com", "note": ["project bluebird", {"bluebird": CARD}], "n": 1.5})
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": [
        {"function": {"arguments": args}}, {"function": {"arguments": "not json " + CARD}}]}}]}
    ex = SimpleNamespace(guardrails=GuardrailState(guards.rules), api="chat", provider_schema="openai")
    out = json.loads(asyncio.run(guards.on_answer(ex, 200, json.dumps(answer).encode())))
    assert decoded == [args, "not json " + CARD]
    calls = out["choices"][0]["message"]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == \
        {"to": "<EMAIL>", "note": ["project <REGEX>", {"<REGEX>": "<CREDIT_CARD>"}], "n": 1.5}
    assert calls[1]["function"]["arguments"] == "not json <CREDIT_CARD>"
    assert ex.guardrails.counts == {"pii": {"email": 1, "credit_card": 2}, "words": {"regex": 2}}


def test_input_slots_of_the_media_moderation_and_rerank_endpoints() -> None:
    # These endpoints had no slots: a pii `block` guardrail let a card through in an image prompt,
    # speech input or rerank document.
    assert _texts("images", {"prompt": "p", "n": 1}) == ["p"]
    assert _texts("speech", {"input": "s", "voice": "alloy"}) == ["s"]
    assert _texts("moderations", {"input": ["a", "b"]}) == ["a", "b"]
    assert _texts("moderations", {"input": [{"type": "text", "text": "t"},
                                            {"type": "image_url", "image_url": {"url": "u"}}]}) == ["t"]
    assert _texts("rerank", {"query": "q", "documents": ["d1", {"text": "d2"}]}) == ["q", "d1", "d2"]


def test_output_slots() -> None:
    body = {"choices": [{"message": {"content": "c", "tool_calls": [{"function": {"arguments": "a"}}]}}]}
    assert [h[k] for h, k in output_slots(body)] == ["c", "a"]
    assert [h[k] for h, k in output_slots({"type": "message", "content": [{"type": "text", "text": "t"}]})] == ["t"]
    # an Anthropic message's thinking: only when the gateway wrote it (the upstream's own is signed)
    message = {"type": "message", "content": [{"type": "thinking", "thinking": "r", "signature": ""},
                                              {"type": "text", "text": "t"}]}
    assert [h[k] for h, k in output_slots(message)] == ["t"]
    assert [h[k] for h, k in output_slots(message, thinking=True)] == ["t", "r"]


def test_a_thinking_delta_is_side_text() -> None:
    # The guardrails read it (when the gateway wrote it); plugins' on_chunk gets answer text only.
    obj = {"type": "content_block_delta", "index": 2, "delta": {"type": "thinking_delta", "thinking": "r"}}
    assert list(sse_deltas.deltas(obj)) == []
    assert [(n, k, i) for _, n, k, i, _ in sse_deltas.deltas(obj, side=True)] == [("thinking", sse_deltas.THINKING, 2)]


def _set(**spec: Any) -> GuardrailSet:
    return GuardrailSet([Guardrail(**{"name": "g", "type": "pii", "action": "mask", **spec})])


def _ex(guards: GuardrailSet) -> Any:
    return SimpleNamespace(guardrails=GuardrailState(guards.rules), api="chat", provider_schema="openai")


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


def test_a_regex_stream_holds_back_only_what_could_still_become_a_match() -> None:
    """Text no pattern could be starting flows at once (a masking regex guardrail must not delay
    a stream's first text by its whole hold-back window); a possible start is held until the
    next chunk decides it."""
    guards = GuardrailSet([Guardrail(name="r", type="regex", deny=["(?i)project\\s+bluebird", "id-\\d+"],
                                     action="mask")])
    ex = _ex(guards)
    got = [_text_by_choice([guards.on_chunk(ex, _chunk([(0, piece)]))]).get(0, "")
           for piece in ("Hello, here is the plan ", "for the proj", "ect  Blue", "bird team, ", "ticket id-12",
                         "34 closed")]
    got.append(_text_by_choice([guards.on_chunk(ex, _chunk([(0, "")], finish=True))]).get(0, ""))
    assert got == ["Hello, here is the plan ", "for the ", "", "<REGEX> team, ", "ticket ", "<REGEX> closed", ""]
    assert ex.guardrails.counts == {"r": {"regex": 2}}


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_regex_stream_masks_as_the_whole_text_would_at_every_split(cut: int) -> None:
    guards = GuardrailSet([Guardrail(name="r", type="regex", deny=["(?i)project\\s+bluebird", "id-\\d+"],
                                     action="mask")])
    ex = _ex(guards)
    text = "see project bluebird, id-42 and id-7; project  BLUEBIRD"
    out = [guards.on_chunk(ex, _chunk([(0, part)])) for part in (text[:cut], text[cut:])]
    out.append(guards.on_chunk(ex, _chunk([(0, "")], finish=True)))
    assert _text_by_choice(out) == {0: "see <REGEX>, <REGEX> and <REGEX>; <REGEX>"}


@pytest.mark.parametrize(("deny", "pieces", "whole"), [
    # The sent text was dropped from the buffer: a lookbehind lost its context and let the value out.
    ("(?<=key=)\\w+", ("the key=", "abc123 done"), "the key=<REGEX> done"),
    # ... and `\b` matched at the chunk's start as if it were the text's.
    ("\\bcat\\b", ("bob", "cat"), "bobcat"),
    # A whole match that more text may still grow was sent as it was: "foo", then "bar" unmasked.
    ("foo(bar)?", ("a foob", "ar z"), "a <REGEX> z"),
])
def test_a_regex_stream_matches_in_the_context_of_what_was_sent(deny: str, pieces: tuple[str, ...], whole: str) -> None:
    guards = GuardrailSet([Guardrail(name="r", type="regex", deny=[deny], action="mask")])
    ex = _ex(guards)
    out = [guards.on_chunk(ex, _chunk([(0, piece)])) for piece in pieces]
    out.append(guards.on_chunk(ex, _chunk([(0, "")], finish=True)))
    assert _text_by_choice(out) == {0: whole}


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


def _streamed_arguments(guards: GuardrailSet, pieces: list[str]) -> tuple[str, list[bytes], Any]:
    """(the arguments a chat stream of `pieces` carried out, the chunks out, the exchange)."""
    ex = _ex(guards)

    def chunk(piece: str, finish: bool = False) -> bytes:
        delta: dict[str, Any] = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} if piece else {}
        return b"data: " + json.dumps({"id": "c", "choices": [
            {"index": 0, "delta": delta, "finish_reason": "tool_calls" if finish else None}]}).encode() + b"\n\n"

    sent = [chunk(p) for p in pieces] + [chunk("", finish=True)]
    out = [guards.on_chunk(ex, c) for c in sent]
    got = "".join(h[n] for ev in sse_deltas.events(b"".join(out)) for h, n, kind, _i, _t in sse_deltas.deltas(ev.obj)
                  if kind == sse_deltas.ARGUMENTS)
    return got, out if out != sent else [], ex


def test_streamed_arguments_are_scanned_with_their_unicode_escapes_decoded() -> None:
    # `\u0040` for `@`, `\u0034` for `4`: the stream's deltas were scanned as the JSON text they
    # are, so these went out unmasked (a non-stream answer's arguments are decoded first).
    raw = '{"to": "jane\\u0040example.com", "card": "\\u0034111 1111 1111 1111", "n": "\\u00e9\\u0001' + CARD + '"}'
    masked = {"to": "<EMAIL>", "card": "<CREDIT_CARD>", "n": "\u00e9\u0001<CREDIT_CARD>"}
    whole = _streamed_arguments(_set(), [raw])[0]
    assert json.loads(whole) == masked
    for cut in range(1, len(raw)):  # an escape split across deltas too
        assert _streamed_arguments(_set(), [raw[:cut], raw[cut:]])[0] == whole, cut
    assert _streamed_arguments(_set(), list(raw))[0] == whole
    with pytest.raises(GatewayError, match="credit_card|email"):
        _streamed_arguments(_set(action="block"), list(raw))
    # `log` counts what the escapes hid, and the deltas go out as they came
    got, changed, ex = _streamed_arguments(_set(action="log"), [raw[:9], raw[9:30], raw[30:]])
    assert got == raw and changed == [] and ex.guardrails.counts == {"g": {"email": 1, "credit_card": 2}}


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


# -- json_schema ---------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _schema_ex(api: str, *specs: Guardrail, schema: Any = SCHEMA) -> tuple[GuardrailSet, Any]:
    """A GuardrailSet and an exchange whose request asked for `schema`, through before_upstream."""
    guards = GuardrailSet(list(specs))
    fmt: dict[str, Any] = {"type": "json_schema", "name": "x", "schema": schema, "strict": True}
    body = {"model": "m", "response_format": {"type": "json_schema", "json_schema": fmt}} if api == "chat" else \
        {"model": "m", "text": {"format": fmt}, "stream": True}
    ex = SimpleNamespace(key_name="k", team=None, route="m", model="m", api=api, guardrails=None, form=None, provider_schema="openai")
    req = SimpleNamespace(body=json.dumps(body).encode(), head=SimpleNamespace(stream=api == "responses"))
    asyncio.run(guards.before_upstream(req, ex))  # type: ignore[arg-type]
    return guards, ex


def _block(name: str = "j") -> Guardrail:
    return Guardrail(name=name, type="json_schema", action="block")


def _stream_of(guards: GuardrailSet, ex: Any, text: str, finish: str = "stop") -> list[bytes]:
    out = [guards.on_chunk(ex, _chunk([(0, text[i:i + 2])])) for i in range(0, len(text), 2)]
    out.append(guards.on_chunk(ex, _chunk([(0, "")], finish=True).replace(b'"stop"', f'"{finish}"'.encode())))
    return out


def test_a_request_without_a_json_schema_format_is_untouched() -> None:
    guards = GuardrailSet([_block()])
    ex = SimpleNamespace(key_name="k", team=None, route="m", model="m", api="chat", guardrails=None, form=None, provider_schema="openai")
    for body in ({"model": "m"}, {"model": "m", "response_format": {"type": "json_object"}}):
        req = SimpleNamespace(body=json.dumps(body).encode(), head=SimpleNamespace(stream=False))
        asyncio.run(guards.before_upstream(req, ex))  # type: ignore[arg-type]
        assert ex.guardrails is not None and not ex.guardrails.active
        assert guards.on_chunk(ex, _chunk([(0, "not json")])) == _chunk([(0, "not json")])


def test_a_streamed_chat_answer_is_checked_at_its_finish_reason() -> None:
    guards, ex = _schema_ex("chat", _block())
    out = _stream_of(guards, ex, '{"n": 1}')
    assert _text_by_choice(out) == {0: '{"n": 1}'}
    guards, ex = _schema_ex("chat", _block())
    with pytest.raises(GatewayError) as info:
        _stream_of(guards, ex, '{"n": "one"}')
    assert (info.value.status, info.value.code) == (502, "content_policy_violation")
    assert info.value.message == "blocked by guardrail 'j' (json_schema): the output does not match the schema at $.n (type)"
    assert ex.guardrails.counts == {"j": {"json_schema": 1}}


def test_a_stream_without_finish_reason_is_checked_at_done() -> None:
    guards, ex = _schema_ex("chat", _block())
    guards.on_chunk(ex, _chunk([(0, '{"n": ')]))
    with pytest.raises(GatewayError, match="not valid JSON"):
        guards.on_chunk(ex, b"data: [DONE]\n\n")


def test_tool_calls_and_refusals_are_not_answers() -> None:
    guards, ex = _schema_ex("chat", _block())
    _stream_of(guards, ex, "", finish="tool_calls")
    refusal = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":null,"refusal":"I cannot"},"finish_reason":null}]}\n\n'
    guards.on_chunk(ex, refusal)
    guards.on_chunk(ex, _chunk([(0, "")], finish=True))
    assert ex.guardrails.counts == {}


def test_log_counts_and_lets_it_through_after_a_mask() -> None:
    mask = Guardrail(name="p", type="pii", action="mask", apply_to=["output"])
    log = Guardrail(name="j", type="json_schema", action="log")
    guards, ex = _schema_ex("chat", mask, log)
    out = _stream_of(guards, ex, f'{{"n": 1, "card": "{CARD}"}}')
    assert _text_by_choice(out) == {0: '{"n": 1, "card": "<CREDIT_CARD>"}'}  # checked as masked: it matches
    assert ex.guardrails.counts == {"p": {"credit_card": 1}}
    out = _stream_of(guards, ex, "no json")
    assert ex.guardrails.counts == {"p": {"credit_card": 1}, "j": {"json_schema": 1}}


def test_a_non_stream_answer_is_checked() -> None:
    guards, ex = _schema_ex("chat", _block())
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": '{"n": 2}'}, "finish_reason": "stop"}]}
    raw = json.dumps(answer).encode()
    assert asyncio.run(guards.on_answer(ex, 200, raw)) == raw
    answer["choices"][0]["message"]["content"] = '{"m": 2}'  # type: ignore[index]
    with pytest.raises(GatewayError, match=r"at \$ \(required\)"):
        asyncio.run(guards.on_answer(ex, 200, json.dumps(answer).encode()))


def test_a_hostile_schema_is_refused_before_the_upstream() -> None:
    with pytest.raises(GatewayError) as info:
        _schema_ex("chat", _block(), schema={"$ref": "http://169.254.169.254/latest"})
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_value", "response_format.json_schema.schema")
    assert "Guardrail 'j' cannot check answers against this schema" in info.value.message


# -- the Responses API's stream -----------------------------------------------------------------

def _rs_event(kind: str, seq: int, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, "sequence_number": seq, **fields}).encode() + b"\n\n"


def _rs_stream(text: str, piece: int = 3) -> list[bytes]:
    at = {"item_id": "m1", "output_index": 0, "content_index": 0}
    item = {"type": "message", "id": "m1", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    events = [("response.output_text.delta", {**at, "delta": text[i:i + piece]}) for i in range(0, len(text), piece)]
    events += [("response.output_text.done", {**at, "text": text}),
               ("response.content_part.done", {**at, "part": {"type": "output_text", "text": text}}),
               ("response.output_item.done", {"output_index": 0, "item": item}),
               ("response.completed", {"response": {"output": [item]}})]
    return [_rs_event(kind, seq, **fields) for seq, (kind, fields) in enumerate(events)]


def _rs_ex(guards: GuardrailSet) -> Any:
    return SimpleNamespace(guardrails=GuardrailState(guards.rules, responses=ResponsesState()))


def test_responses_stream_tail_flushed_as_a_delta_and_done_events_rewritten() -> None:
    guards = _set()
    ex = _rs_ex(guards)
    text = f"card {CARD}"
    events = [ev.obj for chunk in _rs_stream(text) for ev in sse_deltas.events(guards.on_chunk(ex, chunk)) if ev.obj]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "card <CREDIT_CARD>"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "card <CREDIT_CARD>"
    assert CARD not in json.dumps(events)
    assert ex.guardrails.counts == {"g": {"credit_card": 1}}  # counted once, not again per repeated text


def test_responses_text_never_sent_as_deltas_is_scanned_whole() -> None:
    guards = _set(action="block", detectors=["email"])
    ex = _rs_ex(guards)
    item = {"type": "message", "id": "m1", "content": [{"type": "output_text", "text": "mail a@example.com"}]}
    with pytest.raises(GatewayError, match=r"\(email\)"):
        guards.on_chunk(ex, _rs_event("response.output_item.done", 0, output_index=0, item=item))


def test_responses_function_call_arguments_and_json_schema_on_items() -> None:
    guards = _set()
    ex = _rs_ex(guards)
    args = json.dumps({"to": "a@example.com"})
    at = {"item_id": "f1", "output_index": 1}
    chunks = [_rs_event("response.function_call_arguments.delta", i, **at, delta=args[i * 4:i * 4 + 4])
              for i in range((len(args) + 3) // 4)]
    chunks.append(_rs_event("response.function_call_arguments.done", len(chunks), **at, arguments=args))
    events = [ev.obj for c in chunks for ev in sse_deltas.events(guards.on_chunk(ex, c)) if ev.obj]
    streamed = "".join(e["delta"] for e in events if e["type"].endswith(".delta"))
    assert json.loads(streamed) == {"to": "<EMAIL>"} and json.loads(events[-1]["arguments"]) == {"to": "<EMAIL>"}

    guards, ex = _schema_ex("responses", _block())
    for chunk in _rs_stream('{"n": 3}'):
        guards.on_chunk(ex, chunk)
    guards, ex = _schema_ex("responses", _block())
    with pytest.raises(GatewayError, match=r"at \$\.n \(type\)"):
        for chunk in _rs_stream('{"n": "3"}'):
            guards.on_chunk(ex, chunk)


def test_an_escaped_json_schema_type_is_still_found() -> None:
    guards = GuardrailSet([_block()])
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    raw = json.dumps({"model": "m", "response_format": fmt}).replace("json_schema", "json\\u005fschema").encode()
    ex = SimpleNamespace(key_name="k", team=None, route="m", model="m", api="chat", guardrails=None, form=None, provider_schema="openai")
    asyncio.run(guards.before_upstream(SimpleNamespace(body=raw, head=SimpleNamespace(stream=False)), ex))  # type: ignore[arg-type]
    assert ex.guardrails.schema is not None


def test_responses_stream_a_value_split_at_every_boundary_is_masked() -> None:
    text = f"pay with {CARD} or mail a@example.com now"
    for cut in range(1, len(text)):
        guards = _set()
        ex = _rs_ex(guards)
        at = {"item_id": "m1", "output_index": 0, "content_index": 0}
        chunks = [_rs_event("response.output_text.delta", 0, **at, delta=text[:cut]),
                  _rs_event("response.output_text.delta", 1, **at, delta=text[cut:]),
                  _rs_event("response.output_text.done", 2, **at, text=text)]
        events = [ev.obj for c in chunks for ev in sse_deltas.events(guards.on_chunk(ex, c)) if ev.obj]
        streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert streamed == events[-1]["text"] == "pay with <CREDIT_CARD> or mail <EMAIL> now", cut


def test_responses_an_item_without_its_done_event_is_checked_at_the_end() -> None:
    guards, ex = _schema_ex("responses", _block())
    chunks = _rs_stream('{"n": 1')
    del chunks[-2]  # no response.output_item.done: a truncated answer ends with response.completed
    with pytest.raises(GatewayError, match="not valid JSON"):
        for chunk in chunks:
            guards.on_chunk(ex, chunk)
    guards, ex = _schema_ex("responses", _block())
    for chunk in _rs_stream('{"n": 1}'):  # checked once, at output_item.done, and passes
        guards.on_chunk(ex, chunk)
    assert ex.guardrails.responses.checked == {0}


def test_responses_text_shown_before_its_deltas_is_scanned_and_not_doubled() -> None:
    guards = _set()
    ex = _rs_ex(guards)
    args = json.dumps({"to": "a@example.com"})
    at = {"item_id": "f1", "output_index": 0}
    added = {"type": "function_call", "id": "f1", "arguments": args}  # an upstream that shows it up front
    chunks = [_rs_event("response.output_item.added", 0, output_index=0, item=added),
              _rs_event("response.function_call_arguments.delta", 1, **at, delta=args),
              _rs_event("response.function_call_arguments.done", 2, **at, arguments=args)]
    events = [ev.obj for c in chunks for ev in sse_deltas.events(guards.on_chunk(ex, c)) if ev.obj]
    assert json.loads(events[0]["item"]["arguments"]) == {"to": "<EMAIL>"}
    assert json.loads(events[-1]["arguments"]) == {"to": "<EMAIL>"}


def test_output_slots_take_reasoning_refusals_and_summaries() -> None:
    """Text a client reads besides the answer: a chat message's reasoning_content (the gateway's
    form of a provider's thinking) and refusal; a Responses refusal part and reasoning summary."""
    chat = {"choices": [{"message": {"content": "c", "reasoning_content": "r", "refusal": "no"}}]}
    assert [h[k] for h, k in output_slots(chat)] == ["c", "r", "no"]
    vllm = {"choices": [{"message": {"content": "c", "reasoning": "r"}}]}  # (vLLM 0.11+'s newer name)
    assert [h[k] for h, k in output_slots(vllm)] == ["c", "r"]
    responses = {"output": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]},
                            {"type": "message", "content": [{"type": "refusal", "refusal": "won't"}]}]}
    assert [h[k] for h, k in output_slots(responses)] == ["s", "won't"]


def test_a_streamed_chats_reasoning_and_refusal_are_masked_apart_from_its_content() -> None:
    guards = _set()
    ex = _ex(guards)
    texts = {"reasoning_content": f"think {CARD} done", "refusal": f"not {CARD}", "content": "fine"}

    def chunk(i: int, finish: bool = False) -> bytes:
        delta = {name: text[i:i + 3] for name, text in texts.items() if text[i:i + 3]}
        return b"data: " + json.dumps({"id": "c", "choices": [
            {"index": 0, "delta": delta, "finish_reason": "stop" if finish else None}]}).encode() + b"\n\n"

    out = [guards.on_chunk(ex, chunk(i)) for i in range(0, 30, 3)]
    out.append(guards.on_chunk(ex, chunk(99, finish=True)))
    got: dict[str, str] = {}
    for ev in sse_deltas.events(b"".join(out)):
        for holder, name, _kind, _index, _tool in sse_deltas.deltas(ev.obj, side=True):
            if isinstance(holder.get(name), str):
                got[name] = got.get(name, "") + holder[name]
    assert got == {"reasoning_content": "think <CREDIT_CARD> done", "refusal": "not <CREDIT_CARD>", "content": "fine"}
    assert ex.guardrails.counts == {"g": {"credit_card": 2}}


def test_plugins_are_not_given_a_chats_side_text() -> None:
    obj = {"choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": "b", "refusal": "c"}}]}
    assert [h[n] for h, n, *_ in sse_deltas.deltas(obj) if n in h] == ["a"]
    assert [h[n] for h, n, *_ in sse_deltas.deltas(obj, side=True) if n in h] == ["a", "b", "c"]


def test_responses_stream_refusal_and_reasoning_summary_are_masked_and_repeats_rewritten() -> None:
    """A refusal part and a reasoning item's summary are text the client reads: scanned as the
    answer's text is, their tails flushed as their own kind of delta, their repeats rewritten."""
    guards = _set()
    ex = _rs_ex(guards)
    summary, refusal = f"user card {CARD}", f"not with {CARD}"
    r_at = {"item_id": "r1", "output_index": 0, "summary_index": 0}
    m_at = {"item_id": "m1", "output_index": 1, "content_index": 0}
    reasoning = {"type": "reasoning", "id": "r1", "summary": [{"type": "summary_text", "text": summary}]}
    message = {"type": "message", "id": "m1", "role": "assistant", "content": [{"type": "refusal", "refusal": refusal}]}
    events = [("response.reasoning_summary_part.added", {**r_at, "part": {"type": "summary_text", "text": ""}})]
    events += [("response.reasoning_summary_text.delta", {**r_at, "delta": summary[i:i + 4]})
               for i in range(0, len(summary), 4)]
    events += [("response.reasoning_summary_text.done", {**r_at, "text": summary}),
               ("response.reasoning_summary_part.done", {**r_at, "part": {"type": "summary_text", "text": summary}}),
               ("response.output_item.done", {"output_index": 0, "item": reasoning})]
    events += [("response.refusal.delta", {**m_at, "delta": refusal[i:i + 4]}) for i in range(0, len(refusal), 4)]
    events += [("response.refusal.done", {**m_at, "refusal": refusal}),
               ("response.content_part.done", {**m_at, "part": {"type": "refusal", "refusal": refusal}}),
               ("response.output_item.done", {"output_index": 1, "item": message}),
               ("response.completed", {"response": {"output": [reasoning, message]}})]
    chunks = [_rs_event(kind, seq, **fields) for seq, (kind, fields) in enumerate(events)]
    out = [ev.obj for chunk in chunks for ev in sse_deltas.events(guards.on_chunk(ex, chunk)) if ev.obj]
    said = {kind: "".join(e["delta"] for e in out if e["type"] == kind)
            for kind in ("response.reasoning_summary_text.delta", "response.refusal.delta")}
    assert said == {"response.reasoning_summary_text.delta": "user card <CREDIT_CARD>",
                    "response.refusal.delta": "not with <CREDIT_CARD>"}
    assert CARD not in json.dumps(out)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    final = out[-1]["response"]["output"]
    assert final[0]["summary"][0]["text"] == "user card <CREDIT_CARD>"
    assert final[1]["content"][0]["refusal"] == "not with <CREDIT_CARD>"
    assert ex.guardrails.counts == {"g": {"credit_card": 2}}


def test_a_chats_reasoning_tail_goes_out_before_its_answer_not_at_the_end() -> None:
    """A UI closes the thinking panel when the answer starts: the reasoning's held tail is sent
    with the first delta that carries the answer, not after it at finish_reason."""
    guards = _set()
    ex = _ex(guards)

    def chunk(delta: dict[str, Any], finish: bool = False) -> bytes:
        return b"data: " + json.dumps({"id": "c", "choices": [
            {"index": 0, "delta": delta, "finish_reason": "stop" if finish else None}]}).encode() + b"\n\n"

    out = [guards.on_chunk(ex, chunk({"reasoning_content": "so the total is 12345"})),
           guards.on_chunk(ex, chunk({"content": "The answer is 4."})),
           guards.on_chunk(ex, chunk({}, finish=True))]
    order = []
    for ev in sse_deltas.events(b"".join(out)):
        for holder, name, _kind, _index, _tool in sse_deltas.deltas(ev.obj, side=True):
            if holder.get(name):
                order.append((name, holder[name]))
    assert "".join(t for n, t in order if n == "reasoning_content") == "so the total is 12345"
    assert [n for n, _ in order][-1] == "content", order  # the whole reasoning came before the answer


def test_input_slots_take_an_earlier_refusal_and_a_reasoning_items_summary() -> None:
    chat = {"messages": [{"role": "assistant", "content": None, "refusal": "r"}]}
    assert _texts("chat", chat) == ["r"]
    responses = {"input": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]}]}
    assert _texts("responses", responses) == ["s"]


def test_finishing_choices_costs_no_more_per_choice_as_a_hostile_upstream_opens_more() -> None:
    """Each finish_reason flushes its own choice's scanners, found by index: with n choices
    open, n finishes are linear in n, not quadratic (an upstream picks the indexes, up to the
    byte cap). Twenty times the choices must cost well under the ~70 times a walk of every
    scanner per finish gave (measured: ~20 times now)."""
    import gc
    import time

    def run(n: int) -> float:
        guards = _set()
        ex = _ex(guards)
        opened = [_chunk([(i, "call 555-")]) for i in range(n)]  # each holds a tail
        finished = [_chunk([(i, "")], finish=True) for i in range(n)]
        for c in opened:
            guards.on_chunk(ex, c)
        gc.disable()  # (the collector's passes over a full suite's heap are not what this checks)
        try:
            start = time.process_time()
            for c in finished:
                out = guards.on_chunk(ex, c)
            spent = time.process_time() - start
        finally:
            gc.enable()
        assert b"555-" in out and not ex.guardrails.scanners  # the last tail went out; nothing is left
        return spent

    run(200)  # warm
    small, large = min(run(400) for _ in range(3)), min(run(8000) for _ in range(2))
    assert large / small < 45, (small, large)


async def _loop_ticks_during(work: Any) -> tuple[Any, int]:
    """What `work` returned, and how many 1 ms sleeps the event loop finished meanwhile."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        return await work, ticks
    finally:
        done.set()
        await task


def test_a_large_input_is_scanned_off_the_event_loop() -> None:
    # ~1 MB of card-like groups costs a Python parser call every 5 characters (~0.5-2 s here): on
    # the loop it held every other request of the worker that long
    guards = _set(apply_to=["input"])
    text = "4111 " * 200_000 + CARD
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    ex = SimpleNamespace(key_name="k", team=None, route="m", model="m", api="chat", guardrails=None, form=None, provider_schema="openai")
    req = SimpleNamespace(body=json.dumps(body).encode(), head=SimpleNamespace(stream=False))
    _, ticks = asyncio.run(_loop_ticks_during(guards.before_upstream(req, ex)))  # type: ignore[arg-type]
    assert json.loads(req.body)["messages"][0]["content"].endswith(" <CREDIT_CARD>")
    assert ex.guardrails.counts == {"g": {"credit_card": 1}}
    assert ticks >= 20, ticks
    # and an answer as large as that, on its way back
    guards = _set(apply_to=["output"])
    ex = _ex(guards)
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    out, ticks = asyncio.run(_loop_ticks_during(guards.on_answer(ex, 200, json.dumps(answer).encode())))
    assert json.loads(out)["choices"][0]["message"]["content"].endswith(" <CREDIT_CARD>")
    assert ticks >= 20, ticks

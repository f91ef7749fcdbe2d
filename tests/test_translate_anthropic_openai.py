"""Anthropic Messages client API -> OpenAI chat backends: request table, response, and an
OpenAI stream (with tool calls) split at every boundary, read back by the anthropic SDK's own
accumulator so the client's view is exactly what the SDK would build."""
from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2 as httpx  # the HTTP client under the anthropic SDK
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from tollway.core.config import Provider
from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext
from tollway.core.providers.messages.translate import AnthropicOverChat
from tollway.core.request import parse_head

PROVIDER = Provider(name="up", schema="openai", base_url="http://up.example/v1", api_key="sk-up-secret")
ADAPTER = AnthropicOverChat()
_events = TypeAdapter(RawMessageStreamEvent)


def ctx(body: dict[str, Any], passed: tuple[tuple[str, str], ...] = ()) -> CallContext:
    raw = json.dumps({"model": "m", "max_tokens": 64, **body}).encode()
    return CallContext("messages", raw, parse_head(raw), "gpt-up", PROVIDER, 1_700_000_000.0, passed)


# The client's beta for tool input as it comes, unchecked (the stream's other mode)
FINE_GRAINED = (("anthropic-beta", "fine-grained-tool-streaming-2025-05-14"),)


REQUESTS = [
    ("string content", {"messages": [{"role": "user", "content": "hi"}]},
     {"model": "gpt-up", "max_completion_tokens": 64, "max_tokens": None, "messages": [{"role": "user", "content": "hi"}]}),
    ("system blocks", {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                       "messages": [{"role": "user", "content": "hi"}]},
     {"messages": [{"role": "system", "content": "a\nb"}, {"role": "user", "content": "hi"}]}),
    ("tool use and result", {"messages": [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                                          {"type": "tool_use", "id": "tu1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": [{"type": "text", "text": "18C"}]},
                                     {"type": "text", "text": "and?"}]}]},
     {"messages": [{"role": "user", "content": "w?"},
                   {"role": "assistant", "content": "checking", "tool_calls": [
                       {"id": "tu1", "function": {"name": "f", "arguments": '{"a":1}'}, "type": "function"}]},
                   {"role": "tool", "content": "18C", "tool_call_id": "tu1"},
                   {"role": "user", "content": "and?"}]}),
    ("tool result: an error, and images", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "tu1", "is_error": True, "content": [{"type": "text", "text": "no"}]},
        {"type": "tool_result", "tool_use_id": "tu2", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}]},
     {"messages": [{"role": "tool", "content": "Error: no", "tool_call_id": "tu1"},
                   {"role": "tool", "content": "(The result is the images in the next message.)", "tool_call_id": "tu2"},
                   {"role": "user", "content": [
                       {"type": "text", "text": "The result of tool call tu2 holds these images:"},
                       {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
    ("image", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}]}),
    ("image by url", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
    ("tools and choice", {"messages": [{"role": "user", "content": "x"}],
                          "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
                          "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
     {"tools": [{"function": {"name": "f", "description": "d", "parameters": {"type": "object"}}, "type": "function"}],
      "tool_choice": "required", "parallel_tool_calls": False}),
    ("named tool", {"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f", "input_schema": {}}],
                    "tool_choice": {"type": "tool", "name": "f"}},
     {"tool_choice": {"function": {"name": "f"}, "type": "function"}}),
    ("stream asks for usage", {"messages": [{"role": "user", "content": "x"}], "stream": True, "stop_sequences": ["Z"]},
     {"stream": True, "stream_options": {"include_usage": True}, "stop": ["Z"]}),
]


@pytest.mark.parametrize("name,body,expected", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name, body, expected):
    call = ADAPTER.build(ctx(body))
    out = json.loads(call.body)
    assert {k: out.get(k) for k in expected} == expected
    assert call.url == "http://up.example/v1/chat/completions" and ("authorization", "Bearer sk-up-secret") in call.headers


@pytest.mark.parametrize("body,param", [
    ({"top_k": 5}, "top_k"),
    ({"tools": [{"name": "web_search", "type": "web_search_20250305"}]}, "tools[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"},
                                                {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]},
     "messages[0].content[1].source"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}]}, "messages[0].content[0].content[0].source"),
])
def test_untranslatable_is_400_naming_field(body, param):
    with pytest.raises(GatewayError) as err:
        ADAPTER.build(ctx({"messages": [{"role": "user", "content": "x"}], **body}))
    assert err.value.status == 400 and err.value.param == param


def test_response_translation():
    upstream = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-up", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25, "prompt_tokens_details": {"cached_tokens": 6}}}
    out, usage = ADAPTER.response(ctx({"messages": []}), 200, json.dumps(upstream).encode())
    doc = json.loads(out)
    assert doc["id"] == "msg_9" and doc["type"] == "message" and doc["stop_reason"] == "tool_use"
    assert doc["content"] == [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 2}}]
    assert doc["usage"] == {"input_tokens": 14, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 6}
    assert usage.prompt_tokens == 20


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    doc = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


OPENAI_STREAM = b"".join([
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me"}), _chunk({"content": " look."}),
    _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
    _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
    _chunk({}, "tool_calls"),
    _chunk(None, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}),
    b"data: [DONE]\n\n",
])


def sdk_message(cuts: list[int]) -> Any:
    """Feed the OpenAI stream split at `cuts`; rebuild the Message as the anthropic SDK does."""
    translator = ADAPTER.stream(ctx({"messages": [], "stream": True}))
    out, last = b"", 0
    for cut in sorted(set(cuts)) + [len(OPENAI_STREAM)]:
        out += translator.feed(OPENAI_STREAM[last:cut])
        last = cut
    out += translator.flush()
    message, bufs = None, {}
    for block in out.split(b"\n\n"):
        if not block:
            continue
        kind, data = block.split(b"\n", 1)
        event = _events.validate_json(data.removeprefix(b"data: "))
        assert kind == b"event: " + event.type.encode()
        message = accumulate_event(event=event, current_snapshot=message, json_bufs=bufs)
    return message, translator.usage


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(OPENAI_STREAM)), max_size=10))
def test_stream_any_split(cuts):
    m, usage = sdk_message(cuts)
    assert [b.type for b in m.content] == ["text", "tool_use", "tool_use"]
    assert m.content[0].text == "Let me look."
    assert (m.content[1].id, m.content[1].name, m.content[1].input) == ("call_a", "f", {"city": "Paris"})
    assert (m.content[2].name, m.content[2].input) == ("g", {})
    assert m.stop_reason == "tool_use" and m.usage.output_tokens == 7 and m.usage.input_tokens == 11
    assert usage.total_tokens == 18


# -- tool calls keyed by the OpenAI `index` -------------------------------------------------

def _tool(index: int, arguments: str | None = None, id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {} if arguments is None else {"arguments": arguments}}
    if id is not None:
        call.update(id=id, type="function")
    if name is not None:
        call["function"]["name"] = name
    return call


def _tool_stream(*calls: dict[str, Any]) -> bytes:
    """An OpenAI stream of one tool-call delta per chunk, then its end."""
    return b"".join([_chunk({"role": "assistant"}), *(_chunk({"tool_calls": [c]}) for c in calls), _chunk({}, "tool_calls"),
                     _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
                     b"data: [DONE]\n\n"])


def translated(stream: bytes, passed: tuple[tuple[str, str], ...] = ()) -> bytes:
    translator = ADAPTER.stream(ctx({"messages": [], "stream": True}, passed))
    return translator.feed(stream) + translator.flush()


def events_of(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    pairs = [block.split(b"\n", 1) for block in out.split(b"\n\n") if block]
    return [(kind.removeprefix(b"event: ").decode(), json.loads(data.removeprefix(b"data: "))) for kind, data in pairs]


def assert_blocks_in_turn(out: bytes) -> None:
    """Anthropic's stream shape: each block starts at the next index, gets deltas only while it
    is open, and stops before the next one starts; all stop before message_delta."""
    open_block, next_block = None, 0
    for kind, data in events_of(out):
        if kind == "content_block_start":
            assert open_block is None and data["index"] == next_block
            open_block, next_block = next_block, next_block + 1
        elif kind == "content_block_delta":
            assert data["index"] == open_block
        elif kind == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
        elif kind == "message_delta":
            assert open_block is None


_served: list[bytes] = []
_sdk = anthropic.Anthropic(api_key="k", base_url="http://gateway.test", max_retries=0, http_client=httpx.Client(
    transport=httpx.MockTransport(lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                                            content=_served[-1]))))


def sdk_final(stream: bytes, passed: tuple[tuple[str, str], ...] = ()) -> Any:
    """The Message the official anthropic SDK's stream helper builds from the translated stream."""
    out = translated(stream, passed)
    assert_blocks_in_turn(out)
    _served.append(out)
    with _sdk.messages.stream(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
        for _ in s:
            pass
        return s.get_final_message()


def tool_uses(message: Any) -> list[tuple[str, str, Any]]:
    assert message.stop_reason == "tool_use"
    return [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]


def test_interleaved_tool_calls_each_fill_their_own_block():
    """Argument deltas alternating between two calls once all went to the last call opened."""
    stream = _tool_stream(_tool(0, "", "call_a", "get_a"), _tool(1, "", "call_b", "get_b"),
                          _tool(0, '{"x": 1}'), _tool(1, '{"y": 2}'))
    assert tool_uses(sdk_final(stream)) == [("call_a", "get_a", {"x": 1}), ("call_b", "get_b", {"y": 2})]


def test_an_id_repeated_on_every_delta_is_one_call():
    """Some OpenAI-compatible servers repeat the id: it once opened a new block every time."""
    stream = _tool_stream(_tool(0, '{"x"', "call_a", "get_a"), _tool(0, ": 1}", "call_a"))
    assert tool_uses(sdk_final(stream)) == [("call_a", "get_a", {"x": 1})]


def test_whole_calls_without_an_index_each_get_their_own_block():
    """Some OpenAI-compatible servers leave `index` out (read as 0) on whole calls sent one
    after the other: a new id at an index is a new call, not more arguments of the one before."""
    stream = _tool_stream(_tool(0, '{"x": 1}', "call_a", "get_a"), _tool(0, '{"y": 2}', "call_b", "get_b"))
    assert tool_uses(sdk_final(stream)) == [("call_a", "get_a", {"x": 1}), ("call_b", "get_b", {"y": 2})]


def test_a_call_without_an_id_still_opens_a_block():
    """Its delta once went to block -1 (the SDK raised IndexError); the client answers by id, so it gets one."""
    stream = _tool_stream(_tool(0, '{"x": 1}', name="get_a"), _tool(1, "{}", name="get_b"))
    assert tool_uses(sdk_final(stream)) == [("toolu_7_0", "get_a", {"x": 1}), ("toolu_7_1", "get_b", {})]


def test_calls_that_come_one_after_another_stream_as_they_come():
    """A call is held only while another's arguments are unfinished: in OpenAI's usual order
    (each call whole before the next), every block opens with its call's first delta, and the
    one before ends then, with its input (checked whole: see the e2e tests of malformed input)."""
    translator = ADAPTER.stream(ctx({"messages": [], "stream": True}))
    translator.feed(_chunk({"role": "assistant"}) + _chunk({"tool_calls": [_tool(0, '{"a": 1}', "call_a", "f")]}))
    out = events_of(translator.feed(_chunk({"tool_calls": [_tool(1, '{"b"', "call_b", "g")]})))
    assert [kind for kind, _ in out] == ["content_block_delta", "content_block_stop", "content_block_start"]
    assert out[0][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a": 1}'}


def test_a_call_held_behind_an_unfinished_one_comes_at_the_end():
    stream = _tool_stream(_tool(0, '{"a": ', "call_a", "f"), _tool(1, '{"b": "}\\\\"}', "call_b", "g"), _tool(0, "1}"))
    assert tool_uses(sdk_final(stream)) == [("call_a", "f", {"a": 1}), ("call_b", "g", {"b": "}\\"})]


def test_arguments_for_a_call_that_ended_are_refused():
    ended = [_tool(0, '{"a": 1}', "call_a", "f"), _tool(1, "{}", "call_b", "g")]
    assert tool_uses(sdk_final(_tool_stream(*ended, _tool(0, " \n")))) == [("call_a", "f", {"a": 1}), ("call_b", "g", {})]
    with pytest.raises(GatewayError) as err:
        translated(_tool_stream(*ended, _tool(0, ', "b": 2}')))
    assert (err.value.status, err.value.code) == (502, "upstream_malformed")
    assert err.value.message == "The upstream provider sent more arguments for tool call 0 after that call had ended."


def _interleaved(draw: Any) -> tuple[bytes, list[tuple[str, str, Any]]]:
    """Up to three calls, each one's JSON arguments cut into pieces, the pieces of all calls
    interleaved in any order (each call's own in order), the id sent once or on every piece."""
    inputs = draw(st.lists(st.dictionaries(st.sampled_from(["a", "b", "q"]), st.one_of(
        st.integers(), st.text(alphabet='ab{}[]"\\ ', max_size=6), st.lists(st.integers(), max_size=2)), max_size=3),
        min_size=1, max_size=3))
    repeat_id = draw(st.booleans())
    queues = []
    for n, value in enumerate(inputs):
        text = json.dumps(value)
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        queues.append([_tool(n, p, f"call_{n}" if i == 0 or repeat_id else None, f"f{n}" if i == 0 else None)
                       for i, p in enumerate(pieces)])
    deltas = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        deltas.append(queue.pop(0))
    return _tool_stream(*deltas), [(f"call_{n}", f"f{n}", value) for n, value in enumerate(inputs)]


@settings(max_examples=150, deadline=None)
@given(st.data())
@pytest.mark.parametrize("passed", [(), FINE_GRAINED])
def test_any_interleaving_of_tool_calls_gives_each_its_input(passed, data):
    stream, expected = _interleaved(data.draw)
    assert sorted(tool_uses(sdk_final(stream, passed))) == expected


# -- which stop sequence ended the answer ---------------------------------------------------

@pytest.mark.parametrize("matched,expected", [
    (None, ("end_turn", None)),  # OpenAI: "stop" for a stop sequence and for the model's own end alike
    ("Z", ("stop_sequence", "Z")),  # vLLM's stop_reason: the stop string it matched
    ("other", ("end_turn", None)),  # a stop string the client did not send is not its stop sequence
    (7, ("end_turn", None)),  # vLLM: a stop token id
    ({"odd": 1}, ("end_turn", None)),  # another server's shape of the field: read as nothing, not a broken answer
])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_is_named_only_when_the_upstream_says_which(matched, expected, stream):
    request = ctx({"messages": [], "stop_sequences": ["Y", "Z"], "stream": stream})
    if stream:
        finish = {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": matched}
        chunks = [_chunk({"role": "assistant", "content": "a"}), b"data: " + json.dumps(
            {"id": "chatcmpl-7", "model": "gpt-up", "choices": [finish]}).encode() + b"\n\n", b"data: [DONE]\n\n"]
        translator = ADAPTER.stream(request)
        delta = [d for kind, d in events_of(translator.feed(b"".join(chunks)) + translator.flush()) if kind == "message_delta"]
        stop = delta[0]["delta"]["stop_reason"], delta[0]["delta"]["stop_sequence"]
    else:
        upstream = {"id": "chatcmpl-9", "model": "gpt-up", "choices": [{"index": 0, "finish_reason": "stop", "stop_reason": matched,
                                                                        "message": {"role": "assistant", "content": "a"}}]}
        doc = json.loads(ADAPTER.response(request, 200, json.dumps(upstream).encode())[0])
        stop = doc["stop_reason"], doc["stop_sequence"]
    assert stop == expected


# -- a tool call cut off by max_tokens -------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_cut_off_by_the_token_limit_is_max_tokens_not_tool_use(stream):
    """OpenAI says `length` when max_tokens cut the answer, tool call or not. Anthropic says
    `max_tokens` then too (its input is incomplete): `tool_use` would have the client run a
    tool on truncated arguments."""
    call = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"city": "Par'}}
    if stream:
        out = translated(b"".join([_chunk({"role": "assistant", "tool_calls": [call]}), _chunk({}, "length"),
                                   _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}),
                                   b"data: [DONE]\n\n"]))
        _served.append(out)
        with _sdk.messages.stream(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
            for _ in s:
                pass
            stop = s.get_final_message().stop_reason
    else:
        upstream = {"id": "chatcmpl-9", "model": "gpt-up", "choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant", "content": None, "tool_calls": [{k: v for k, v in call.items() if k != "index"}]}}]}
        stop = json.loads(ADAPTER.response(ctx({"messages": []}), 200, json.dumps(upstream).encode())[0])["stop_reason"]
    assert stop == "max_tokens"


# -- the reasoning of a vLLM that names its field `reasoning` ------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_under_vllms_newer_field_name_is_a_thinking_block(stream):
    """vLLM renamed `reasoning_content` to `reasoning` (its docs, 0.11: the old name "for now");
    a server that sends only the new one had its thinking dropped from the Anthropic answer."""
    if stream:
        message = sdk_final(b"".join([_chunk({"role": "assistant", "reasoning": "Let me think."}), _chunk({"content": "42"}),
                                      _chunk({}, "stop"), b"data: [DONE]\n\n"]))
        blocks = [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content]
    else:
        upstream = {"id": "chatcmpl-9", "model": "gpt-up", "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "42", "reasoning": "Let me think."}}]}
        doc = json.loads(ADAPTER.response(ctx({"messages": []}), 200, json.dumps(upstream).encode())[0])
        blocks = [(b["type"], b.get("thinking") or b.get("text")) for b in doc["content"]]
    assert blocks == [("thinking", "Let me think."), ("text", "42")]


def test_a_reasoning_field_of_another_shape_is_not_text():
    upstream = {"id": "chatcmpl-9", "model": "gpt-up", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "42", "reasoning": {"effort": "low"}}}]}
    doc = json.loads(ADAPTER.response(ctx({"messages": []}), 200, json.dumps(upstream).encode())[0])
    assert doc["content"] == [{"type": "text", "text": "42"}]

"""Anthropic Messages client API -> OpenAI chat backends: request table, response, and an
OpenAI stream (with tool calls) split at every boundary, read back by the anthropic SDK's own
accumulator so the client's view is exactly what the SDK would build."""
from __future__ import annotations

import json
from typing import Any

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


def ctx(body: dict[str, Any]) -> CallContext:
    raw = json.dumps({"model": "m", "max_tokens": 64, **body}).encode()
    return CallContext("messages", raw, parse_head(raw), "gpt-up", PROVIDER, 1_700_000_000.0)


REQUESTS = [
    ("string content", {"messages": [{"role": "user", "content": "hi"}]},
     {"model": "gpt-up", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}),
    ("system blocks", {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                       "messages": [{"role": "user", "content": "hi"}]},
     {"messages": [{"role": "system", "content": "ab"}, {"role": "user", "content": "hi"}]}),
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
    ("image", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}]}),
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

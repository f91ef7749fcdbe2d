"""OpenAI chat <-> Anthropic Messages: request tables, response tables, and streams fed as
real Anthropic wire bytes split at every possible boundary."""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import streams
from tests.fakes import anthropic_upstream as fa
from tests.streams import summarize
from tollway.core.config import Provider
from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext
from tollway.core.providers.chat.anthropic import OpenAIToAnthropic
from tollway.core.request import parse_head

PROVIDER = Provider(name="claude", schema="anthropic", base_url="https://api.anthropic.com/", api_key="sk-ant-secret")
ADAPTER = OpenAIToAnthropic()
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def ctx(body: dict[str, Any]) -> CallContext:
    raw = json.dumps({"model": "claude", **body}).encode()
    return CallContext("chat", raw, parse_head(raw), "claude-sonnet-4-5", PROVIDER, 1_700_000_000.0)


def sent(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(ADAPTER.build(ctx(body)).body)


USER = {"role": "user", "content": "hi"}

REQUESTS = [
    ("defaults max_tokens", {"messages": [USER]},
     {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ("max_completion_tokens wins", {"messages": [USER], "max_completion_tokens": 7, "max_tokens": 9}, {"max_tokens": 7}),
    # a 0 is the client's cap, not "none": it reaches Claude, whose own error answers it (issue 17)
    ("max_tokens 0 goes as it is", {"messages": [USER], "max_tokens": 0}, {"max_tokens": 0}),
    ("max_completion_tokens 0 wins", {"messages": [USER], "max_completion_tokens": 0, "max_tokens": 9}, {"max_tokens": 0}),
    ("system and developer", {"messages": [{"role": "system", "content": "a"}, {"role": "developer", "content": "b"}, USER]},
     {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
    ("stop string", {"messages": [USER], "stop": "END"}, {"stop_sequences": ["END"]}),
    ("sampling", {"messages": [USER], "temperature": 0.5, "top_p": 0.9}, {"temperature": 0.5, "top_p": 0.9}),
    ("user id", {"messages": [USER], "user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
    ("tool_choice auto", {"messages": [USER], "tools": [TOOL], "tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
    ("tool_choice required", {"messages": [USER], "tools": [TOOL], "tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
    ("tool_choice none", {"messages": [USER], "tools": [TOOL], "tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
    ("tool_choice named", {"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {"tool_choice": {"type": "tool", "name": "get_weather"}}),
    ("no parallel tools", {"messages": [USER], "tools": [TOOL], "parallel_tool_calls": False},
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("tools", {"messages": [USER], "tools": [TOOL]}, {"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}),
    ("image data url", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]}),
    ("image url", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}),
    ("consecutive roles merge; tool results join the user turn", {"messages": [
        USER, {"role": "assistant", "content": "let me check", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
            {"id": "t2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "one"}, {"role": "tool", "tool_call_id": "t2", "content": "two"},
        {"role": "user", "content": "thanks"}]},
     {"messages": [
         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "let me check"},
                                           {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                                           {"type": "tool_use", "id": "t2", "name": "g", "input": {}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                                      {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
                                      {"type": "text", "text": "thanks"}]}]}),
]


@pytest.mark.parametrize("name,body,expected", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name, body, expected):
    out = sent(body)
    assert {k: out.get(k) for k in expected} == expected


def test_request_goes_to_messages_with_provider_credential():
    call = ADAPTER.build(ctx({"messages": [USER], "stream": True}))
    headers = dict(call.headers)
    assert call.url == "https://api.anthropic.com/v1/messages" and call.stream
    assert headers["x-api-key"] == "sk-ant-secret" and headers["anthropic-version"] == "2023-06-01"


UNSUPPORTED = [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{nope"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": "hi"}, "messages"),
]


@pytest.mark.parametrize("extra,param", UNSUPPORTED)
def test_untranslatable_request_is_400_naming_the_field(extra, param):
    with pytest.raises(GatewayError) as err:
        ADAPTER.build(ctx({"messages": [USER], **extra}))
    assert err.value.status == 400 and err.value.param == param


RESPONSES = [
    ("text", fa.message_body("claude-x", False), "stop", fa.REPLY, None),
    ("tool use", fa.message_body("claude-x", True), "tool_calls", fa.REPLY, [("get_weather", fa.TOOL_INPUT)]),
    ("max tokens", {**fa.message_body("claude-x", False), "stop_reason": "max_tokens"}, "length", fa.REPLY, None),
    # (a call max_tokens cut off may hold half its arguments: `length`, as OpenAI says it, so that
    # no client runs the tool with them)
    ("tool use cut off by max_tokens", {**fa.message_body("claude-x", True), "stop_reason": "max_tokens"}, "length",
     fa.REPLY, [("get_weather", fa.TOOL_INPUT)]),
    ("refusal", {**fa.message_body("claude-x", False), "stop_reason": "refusal"}, "content_filter", fa.REPLY, None),
]


@pytest.mark.parametrize("name,upstream,finish,text,calls", RESPONSES, ids=[r[0] for r in RESPONSES])
def test_response_translation(name, upstream, finish, text, calls):
    out, usage = ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(upstream).encode())
    doc = json.loads(out)
    choice = doc["choices"][0]
    assert doc["object"] == "chat.completion" and doc["created"] == 1_700_000_000
    assert choice["finish_reason"] == finish and choice["message"]["content"] == text
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"].get("tool_calls") or []]
    assert got == (calls or [])
    assert doc["usage"]["prompt_tokens"] == 33 and doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 8
    assert usage.cache_write_tokens == 4 and usage.completion_tokens == fa.OUTPUT_TOKENS


@pytest.mark.parametrize("usage", [None, {}, {"input_tokens": None, "output_tokens": None}])
def test_response_without_usage_leaves_it_to_the_proxy_to_count(usage):
    body = fa.message_body("claude-x", False)
    del body["usage"]
    if usage is not None:
        body["usage"] = usage
    out, found = ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())
    assert found is None  # not 0 tokens: the proxy counts the text
    assert json.loads(out)["choices"][0]["message"]["content"] == fa.REPLY


def test_thinking_becomes_reasoning_content():
    body = {**fa.message_body("claude-x", False)}
    body["content"] = [{"type": "thinking", "thinking": "hmm", "signature": "s"}, *body["content"]]
    doc = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])
    assert doc["choices"][0]["message"]["reasoning_content"] == "hmm"


@pytest.mark.parametrize("status,body,headers,client_status,code", [
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, [], 503, "overloaded"),
    (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}, [("retry-after", "7")], 429, "rate_limit_exceeded"),
    (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}, [], 400, "invalid_request"),
    (401, {"type": "error", "error": {"type": "authentication_error", "message": "key sk-ant-secret"}}, [], 502, "upstream_auth_failed"),
    (500, {"type": "error", "error": {"type": "api_error", "message": "boom"}}, [], 502, "upstream_error"),
])
def test_error_mapping(status, body, headers, client_status, code):
    err = ADAPTER.error(ctx({"messages": [USER]}), status, headers, json.dumps(body).encode())
    assert (err.status, err.code) == (client_status, code)
    assert dict(err.headers) == dict(headers) and "sk-ant-secret" not in err.body().decode()


# -- streams --------------------------------------------------------------------------

def client_view(stream_bytes: list[bytes], cuts: list[int], include_usage: bool = True) -> tuple[list[dict], Any]:
    """Feed the wire bytes split at `cuts`; return the client's decoded chunks and usage."""
    body = {"messages": [USER], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return streams.client_view(ADAPTER.stream(ctx(body)), b"".join(stream_bytes), cuts)


TOOL_STREAM = fa.message_events("claude-x", with_tool=True)
WIRE = b"".join(TOOL_STREAM)


def test_stream_whole():
    chunks, usage = client_view(TOOL_STREAM, [])
    s = summarize(chunks)
    assert s["text"] == fa.REPLY and s["finishes"] == ["tool_calls"]
    assert s["calls"] == {0: {"id": "toolu_fake01", "name": "get_weather", "arguments": json.dumps(fa.TOOL_INPUT)}}
    assert s["usage"] == [{"prompt_tokens": 33, "completion_tokens": fa.OUTPUT_TOKENS, "total_tokens": 50,
                           "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 0}}]
    assert usage.cache_write_tokens == 4
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_stream_any_split_gives_the_same_client_view(cuts):
    whole, _ = client_view(TOOL_STREAM, [])
    split, usage = client_view(TOOL_STREAM, cuts)
    assert summarize(split) == summarize(whole) and usage.prompt_tokens == 33


def test_stream_every_single_cut_point():
    expected = summarize(client_view(TOOL_STREAM, [])[0])
    for cut in range(len(WIRE) + 1):
        assert summarize(client_view(TOOL_STREAM, [cut])[0]) == expected


def test_stream_without_usage_request_has_no_usage_chunk():
    chunks, usage = client_view(TOOL_STREAM, [], include_usage=False)
    assert all("usage" not in c for c in chunks) and usage.completion_tokens == fa.OUTPUT_TOKENS


def test_stream_text_for_counting_holds_thinking_and_tool_input_too():
    # Counted when the upstream reports no usage: a tool call's input and the thinking are output tokens.
    start, *rest = fa.with_usage(fa.message_events("claude-x", with_tool=True), None, None)
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    translator.feed(b"".join([start, *fa.thinking_events("Let me see. "), *rest]))
    translator.flush()
    assert translator.usage is None and translator.streamed_text() == "Let me see. " + fa.REPLY + json.dumps(fa.TOOL_INPUT)


@pytest.mark.parametrize("start, delta, expected", [
    (None, None, None),  # never reported: left to the proxy, which counts the text
    ({}, {}, None),  # empty usage objects report nothing either
    ({"input_tokens": 25, "output_tokens": 1}, None, (25, 1)),  # partly reported: what was, as ever
    (None, {"output_tokens": 15}, (0, 15)),
    ({"input_tokens": 25, "output_tokens": 1}, {"output_tokens": 15}, (25, 15)),
])
def test_stream_usage_is_what_the_upstream_reported_else_none(start, delta, expected):
    events = fa.with_usage(fa.message_events("claude-x", with_tool=False), start, delta)
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}))
    out = translator.feed(b"".join(events)) + translator.flush()
    u = translator.usage
    assert (None if u is None else (u.prompt_tokens, u.completion_tokens)) == expected
    assert (b'"usage":{' in out) == (expected is not None)  # no made-up usage chunk for the client
    assert translator.streamed_text() == fa.REPLY


def test_stream_error_event_raises_mapped_error():
    events = fa.message_events("claude-x", with_tool=False, fail_midway=True)
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    with pytest.raises(GatewayError) as err:
        translator.feed(b"".join(events))
    assert err.value.status == 503


def test_stream_cut_short_is_an_error():
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    translator.feed(b"".join(TOOL_STREAM[:5]))
    with pytest.raises(GatewayError):
        translator.flush()


def test_events_after_message_stop_are_ignored():
    # A hostile or broken upstream goes on after its message_stop: the client already has its
    # [DONE], so nothing more goes out, and nothing more is counted or billed.
    late = [fa.sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": " AFTER"}}),
            fa.sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": 9999}}),
            fa.sse("message_stop", {"type": "message_stop"})]
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}))
    out = translator.feed(b"".join(fa.message_events("claude-x", with_tool=False) + late)) + translator.flush()
    assert out.count(b"[DONE]") == 1 and out.endswith(b"data: [DONE]\n\n") and b"AFTER" not in out
    assert translator.streamed_text() == fa.REPLY and translator.usage.completion_tokens == fa.OUTPUT_TOKENS


# The documented example of a streamed answer, as Anthropic's docs print it (CRLF and all
# spacing variants included), so the translator is checked against more than our own fake.
DOC_STREAM = (
    b'event: message_start\r\ndata: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", '
    b'"type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", "stop_reason": null, '
    b'"stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}\r\n\r\n'
    b'event: content_block_start\r\ndata: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}\r\n\r\n'
    b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}\r\n\r\n'
    b'event: content_block_stop\r\ndata: {"type": "content_block_stop", "index": 0}\r\n\r\n'
    b'event: message_delta\r\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, '
    b'"usage": {"output_tokens": 15}}\r\n\r\n'
    b'event: message_stop\r\ndata: {"type": "message_stop"}\r\n\r\n'
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(DOC_STREAM)), max_size=8))
def test_documented_stream_any_split(cuts):
    chunks, usage = client_view([DOC_STREAM], cuts)
    s = summarize(chunks)
    assert s["text"] == "Hello!" and s["finishes"] == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (25, 15)

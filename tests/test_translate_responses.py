"""The Responses API over translated providers, unit by unit: Responses request -> each
provider's upstream body, provider answers (the fakes' real wire bytes and recorded shapes from
the providers' docs) -> the `response` object, and provider streams -> Responses events, fed
split at any byte."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import anthropic_upstream as fa
from tests.fakes import bedrock_upstream as fb
from tests.fakes import gemini_upstream as fg
from tollway.core.config import Provider
from tollway.core.errors import GatewayError, content_policy_violation
from tollway.core.providers.base import CallContext
from tollway.core.providers.registry import adapter_for
from tollway.core.request import parse_head

NOW = 1_700_000_000.0
ANTHROPIC = Provider(name="claude", schema="anthropic", base_url="https://api.anthropic.com/", api_key="sk-ant-secret")
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}


def ctx(provider: Provider, body: dict[str, Any], upstream_model: str = "model-x") -> CallContext:
    raw = json.dumps({"model": "m", **body}).encode()
    return CallContext("responses", raw, parse_head(raw), upstream_model, provider, NOW)


def adapter(provider: Provider) -> Any:
    found = adapter_for("responses", provider.schema)
    assert found is not None
    return found


def sent(provider: Provider, body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(adapter(provider).build(ctx(provider, body)).body)


def answer(provider: Provider, upstream: dict[str, Any], body: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    out, usage = adapter(provider).response(ctx(provider, body or {"input": "hi"}), 200, json.dumps(upstream).encode())
    return json.loads(out), usage


def events(raw: bytes) -> list[dict[str, Any]]:
    """The Responses SSE events in `raw`, each checked to name its type in `event:` and `data`."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = json.loads(data[6:])
        assert event["type"] == name[7:].decode()
        out.append(event)
    return out


def streamed(provider: Provider, wire: bytes, cuts: list[int] = (), body: dict[str, Any] | None = None) -> tuple[list[dict], Any]:
    """Feed the provider's stream bytes split at `cuts`; the client's events and the usage."""
    translator = adapter(provider).stream(ctx(provider, {"input": "hi", "stream": True, **(body or {})}))
    out, last = b"", 0
    for cut in sorted(set(cuts)) + [len(wire)]:
        out += translator.feed(wire[last:cut])
        last = cut
    out += translator.flush()
    return events(out), translator.usage


def shape(evs: list[dict[str, Any]]) -> list[str]:
    """Event types, a run of the same delta event counted once."""
    types = [e["type"] for e in evs]
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


TEXT_ITEM = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done"]
CALL_ITEM = ["response.output_item.added", "response.function_call_arguments.delta",
             "response.function_call_arguments.done", "response.output_item.done"]
REASONING_ITEM = ["response.output_item.added", "response.reasoning_summary_part.added",
                  "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
                  "response.reasoning_summary_part.done", "response.output_item.done"]


def check_stream_invariants(evs: list[dict[str, Any]]) -> dict[str, Any]:
    """What holds for every Responses stream, as OpenAI sends it; returns the final response."""
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert [e["type"] for e in evs[:2]] == ["response.created", "response.in_progress"]
    final = evs[-1]["response"]
    assert evs[0]["response"]["id"] == final["id"] and evs[0]["response"]["status"] == "in_progress"
    for e in evs:
        if "item_id" in e:
            assert final["output"][e["output_index"]]["id"] == e["item_id"]
        if e["type"] == "response.output_item.done":
            assert final["output"][e["output_index"]] == e["item"]
    text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
    done = [e["text"] for e in evs if e["type"] == "response.output_text.done"]
    assert [text] == done or (not text and not done)
    return final


# -- requests: shared mapping (seen through the Anthropic pair) -------------------------------

REQUESTS = [
    ("string input", {"input": "hi"},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 4096}),
    ("instructions and developer become system", {"instructions": "a", "input": [
        {"role": "developer", "content": "b"}, {"role": "user", "content": "hi"}]},
     {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
    ("input_text parts and an earlier assistant turn", {"input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
        {"role": "user", "content": "three"}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "one"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
                   {"role": "user", "content": [{"type": "text", "text": "three"}]}]}),
    ("an image", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {
         "type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]}),
    ("function calls join the assistant turn; outputs become tool results", {"input": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "checking"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": ""},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                                                     {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
                                                     {"type": "tool_use", "id": "c2", "name": "f", "input": {}}]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "one"},
                                                {"type": "tool_result", "tool_use_id": "c2", "content": "two"}]}]}),
    ("function tools", {"input": "hi", "tools": [WEATHER]},
     {"tools": [{"name": "get_weather", "input_schema": {"type": "object"}, "description": "Weather"}]}),
    ("tool_choice required", {"input": "hi", "tools": [WEATHER], "tool_choice": "required"},
     {"tool_choice": {"type": "any"}}),
    ("tool_choice named", {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}},
     {"tool_choice": {"type": "tool", "name": "get_weather"}}),
    ("no parallel calls", {"input": "hi", "tools": [WEATHER], "parallel_tool_calls": False},
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("sampling, limit, user", {"input": "hi", "temperature": 0.2, "top_p": 0.9, "max_output_tokens": 50,
                               "safety_identifier": "u-1"},
     {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "metadata": {"user_id": "u-1"}}),
    ("reasoning effort: thinking budget above the default limit", {"input": "hi", "reasoning": {"effort": "medium"}},
     {"thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 8192 + 4096}),
    ("reasoning effort within a client limit", {"input": "hi", "reasoning": {"effort": "high"}, "max_output_tokens": 3000},
     {"thinking": {"type": "enabled", "budget_tokens": 2999}, "max_tokens": 3000}),
    ("reasoning effort none: no thinking", {"input": "hi", "reasoning": {"effort": "none"}}, {"max_tokens": 4096}),
    ("reasoning effort in an open tool loop: no thinking (Claude would want its signed block back)",
     {"reasoning": {"effort": "high"}, "input": [
         {"role": "user", "content": "weather?"},
         {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
         {"type": "function_call_output", "call_id": "c1", "output": "18C"}]}, {"max_tokens": 4096}),
    ("stream", {"input": "hi", "stream": True}, {"stream": True}),
]


@pytest.mark.parametrize(("name", "body", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_to_anthropic(name, body, expected):
    got = sent(ANTHROPIC, body)
    assert got["model"] == "model-x"
    for key, value in expected.items():
        assert got[key] == value, key
    if "thinking" not in expected:
        assert "thinking" not in got


def test_anthropic_call_carries_the_provider_credential_and_url():
    call = adapter(ANTHROPIC).build(ctx(ANTHROPIC, {"input": "hi", "stream": True}))
    assert call.url == "https://api.anthropic.com/v1/messages" and call.stream
    assert ("x-api-key", "sk-ant-secret") in call.headers


REFUSED = [
    ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
    ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
    ({"background": True}, "background", None),
    ({"top_logprobs": 2}, "top_logprobs", None),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format", None),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", None),
    ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice.type", None),
    ({"tool_choice": "sometimes"}, "tool_choice", None),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", None),
    ({"reasoning": {"effort": "low"}, "max_output_tokens": 1000}, "max_output_tokens", None),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "unsupported_parameter"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", None),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", None),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", None),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
     "input[0].arguments", None),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input[0].content[0].type", None),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0]", None),
    ({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[0].content", None),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].output[0].type", None),
    ({"input": 5}, "input", None),
]


@pytest.mark.parametrize(("extra", "param", "code"), REFUSED, ids=[r[1] for r in REFUSED])
def test_what_a_translated_provider_cannot_honour_is_a_400_naming_it(extra, param, code):
    with pytest.raises(GatewayError) as err:
        sent(ANTHROPIC, {"input": "hi", **extra})
    assert err.value.status == 400 and err.value.param == param and err.value.code == code


LONG = "x" * 1_000_000


@pytest.mark.parametrize("extra", [
    {"input": [{"type": LONG}]}, {"input": [{"role": LONG, "content": "hi"}]},
    {"input": [{"role": "user", "content": [{"type": LONG}]}]},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": LONG}]}]},
    {"tools": [{"type": LONG}]}, {"tool_choice": LONG}, {"tool_choice": {"type": LONG}},
])
def test_a_refused_value_is_echoed_cut_short(extra):
    # A megabyte type name must not come back as a megabyte error body (nor fill the access log).
    with pytest.raises(GatewayError) as err:
        sent(ANTHROPIC, {"input": "hi", **extra})
    assert err.value.status == 400 and len(err.value.message) < 400


def test_previous_response_id_message_says_the_gateway_keeps_no_state():
    with pytest.raises(GatewayError) as err:
        sent(ANTHROPIC, {"input": "hi", "previous_response_id": "resp_1"})
    assert "keeps no Responses API state" in err.value.message and "'input'" in err.value.message


# -- answers: Anthropic -------------------------------------------------------------------

# A thinking answer cut off by max_tokens, in the shape Anthropic's extended-thinking docs show.
ANTHROPIC_THINKING = {
    "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "thinking", "thinking": "Let me work it out.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
                {"type": "text", "text": "The answer is"}],
    "stop_reason": "max_tokens", "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
}


def test_anthropic_answer_with_a_tool_call():
    body, usage = answer(ANTHROPIC, fa.message_body("claude-sonnet-4-5", True),
                         {"input": "hi", "tools": [WEATHER], "instructions": "Be brief.", "metadata": {"k": "v"}})
    assert body["object"] == "response" and body["status"] == "completed" and body["store"] is False
    assert body["instructions"] == "Be brief." and body["metadata"] == {"k": "v"} and body["tools"][0]["name"] == "get_weather"
    message, call = body["output"]
    assert message["type"] == "message" and message["content"][0] == {
        "type": "output_text", "text": fa.REPLY, "annotations": [], "logprobs": []}
    assert call["type"] == "function_call" and call["call_id"] == "toolu_fake01" and call["status"] == "completed"
    assert json.loads(call["arguments"]) == fa.TOOL_INPUT and call["id"].startswith("fc_")
    assert body["usage"] == {"input_tokens": 33, "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 4},
                             "output_tokens": fa.OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": 33 + fa.OUTPUT_TOKENS}
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens) == (33, 8, 4)


def test_anthropic_thinking_cut_off_is_an_incomplete_response_with_a_reasoning_item():
    body, _ = answer(ANTHROPIC, ANTHROPIC_THINKING, {"input": "hi", "reasoning": {"effort": "low"}, "max_output_tokens": 2000})
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [{"type": "summary_text", "text": "Let me work it out."}]
    assert message["content"][0]["text"] == "The answer is"
    assert body["reasoning"] == {"effort": "low", "summary": None} and body["max_output_tokens"] == 2000


def test_anthropic_errors_map_like_chat():
    err = adapter(ANTHROPIC).error(ctx(ANTHROPIC, {"input": "hi"}), 429, [("retry-after", "7")],
                                   b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}')
    assert (err.status, err.code, err.message, err.headers) == (429, "rate_limit_exceeded", "slow down", [("retry-after", "7")])
    auth = adapter(ANTHROPIC).error(ctx(ANTHROPIC, {"input": "hi"}), 401, [], b'{"error":{"message":"sk-ant-secret"}}')
    assert auth.status == 502 and "sk-ant-secret" not in auth.body().decode()


# -- streams: Anthropic -------------------------------------------------------------------

ANTHROPIC_WIRE = b"".join(fa.message_events("claude-sonnet-4-5", with_tool=True))


def test_anthropic_stream_events_in_openai_order():
    evs, usage = streamed(ANTHROPIC, ANTHROPIC_WIRE, body={"tools": [WEATHER]})
    assert shape(evs) == ["response.created", "response.in_progress", *TEXT_ITEM, *CALL_ITEM, "response.completed"]
    final = check_stream_invariants(evs)
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == fa.REPLY
    assert json.loads(final["output"][1]["arguments"]) == fa.TOOL_INPUT
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 8, "cache_write_tokens": 4}
    assert final["usage"]["output_tokens"] == fa.OUTPUT_TOKENS and usage.cache_write_tokens == 4
    added = evs[2]["item"]
    assert added == {"id": final["output"][0]["id"], "content": [], "status": "in_progress", "type": "message",
                     "role": "assistant"}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_WIRE)), max_size=10))
def test_anthropic_stream_any_split_gives_the_same_events(cuts):
    assert streamed(ANTHROPIC, ANTHROPIC_WIRE, cuts)[0] == streamed(ANTHROPIC, ANTHROPIC_WIRE)[0]


# Anthropic's documented extended-thinking stream (thinking, signature, then text), CRLF-framed.
ANTHROPIC_THINKING_STREAM = (
    b'event: message_start\r\ndata: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",'
    b'"content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":9,"output_tokens":1}}}\r\n\r\n'
    b'event: content_block_start\r\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Step 1."}}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}\r\n\r\n'
    b'event: content_block_stop\r\ndata: {"type":"content_block_stop","index":0}\r\n\r\n'
    b'event: content_block_start\r\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"42"}}\r\n\r\n'
    b'event: content_block_stop\r\ndata: {"type":"content_block_stop","index":1}\r\n\r\n'
    b'event: message_delta\r\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":30}}\r\n\r\n'
    b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n'
)


def test_anthropic_thinking_stream_opens_a_reasoning_item_first():
    evs, _ = streamed(ANTHROPIC, ANTHROPIC_THINKING_STREAM)
    assert shape(evs) == ["response.created", "response.in_progress", *REASONING_ITEM, *TEXT_ITEM, "response.completed"]
    final = check_stream_invariants(evs)
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "Step 1."}]
    assert final["output"][1]["content"][0]["text"] == "42" and final["usage"]["output_tokens"] == 30


def test_anthropic_stream_cut_off_by_max_tokens_ends_incomplete():
    wire = ANTHROPIC_THINKING_STREAM.replace(b'"stop_reason":"end_turn"', b'"stop_reason":"max_tokens"')
    evs, _ = streamed(ANTHROPIC, wire)
    assert evs[-1]["type"] == "response.incomplete"
    assert evs[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_anthropic_error_mid_stream_ends_with_error_then_response_failed():
    translator = adapter(ANTHROPIC).stream(ctx(ANTHROPIC, {"input": "hi", "stream": True}))
    wire = b"".join(fa.message_events("claude-sonnet-4-5", with_tool=False, fail_midway=True))
    out = b""
    with pytest.raises(GatewayError) as err:
        for piece in fa.message_events("claude-sonnet-4-5", with_tool=False, fail_midway=True):
            out += translator.feed(piece)
    assert wire.endswith(b"Overloaded\"}}\n\n") and err.value.status == 503
    evs = events(out + translator.error_event(err.value))
    assert [e["type"] for e in evs[-2:]] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    failed = evs[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "overloaded", "message": "Overloaded"}
    assert evs[-2]["message"] == "Overloaded" and evs[-2]["code"] == "overloaded"


def test_anthropic_stream_that_never_started_is_an_error():
    translator = adapter(ANTHROPIC).stream(ctx(ANTHROPIC, {"input": "hi", "stream": True}))
    with pytest.raises(GatewayError):
        translator.flush()


# -- Bedrock Converse -------------------------------------------------------------------------

BEDROCK = Provider(name="aws", schema="bedrock", region="us-east-1", base_url="https://bedrock.example")
CLAUDE_ON_BEDROCK = "anthropic.claude-sonnet-4-20250514-v1:0"


def test_request_to_bedrock_with_tools_and_a_tool_result():
    body = {"instructions": "Be brief.", "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 64, "input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "18C"}]}
    got = sent(BEDROCK, body)
    assert got == {
        "messages": [{"role": "user", "content": [{"text": "weather?"}]},
                     {"role": "assistant", "content": [{"toolUse": {"toolUseId": "c1", "name": "get_weather",
                                                                    "input": {"city": "Paris"}}}]},
                     {"role": "user", "content": [{"toolResult": {"toolUseId": "c1", "content": [{"text": "18C"}]}}]}],
        "system": [{"text": "Be brief."}], "inferenceConfig": {"maxTokens": 64},
        "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}},
                                               "description": "Weather"}}], "toolChoice": {"any": {}}}}


def test_bedrock_call_goes_to_converse_stream_of_the_model():
    call = adapter(BEDROCK).build(ctx(BEDROCK, {"input": "hi", "stream": True}, CLAUDE_ON_BEDROCK))
    assert call.url == f"https://bedrock.example/model/{CLAUDE_ON_BEDROCK.replace(':', '%3A')}/converse-stream"
    assert call.stream and ("accept", "application/vnd.amazon.eventstream") in call.headers


def test_reasoning_effort_on_bedrock_claude_is_its_thinking_budget():
    raw = adapter(BEDROCK).build(ctx(BEDROCK, {"input": "hi", "reasoning": {"effort": "minimal"}}, CLAUDE_ON_BEDROCK)).body
    got = json.loads(raw)
    assert got["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert got["inferenceConfig"] == {"maxTokens": 1024 + 4096}


def test_reasoning_effort_on_a_bedrock_model_without_a_budget_is_a_400():
    with pytest.raises(GatewayError) as err:
        adapter(BEDROCK).build(ctx(BEDROCK, {"input": "hi", "reasoning": {"effort": "low"}}, "amazon.titan-text-premier-v1:0"))
    assert err.value.param == "reasoning.effort" and "amazon.titan-text-premier-v1:0" in err.value.message
    assert "'reasoning.effort' is not supported" in err.value.message  # the field as the client wrote it


def test_bedrock_refuses_json_mode_naming_the_responses_field():
    with pytest.raises(GatewayError) as err:
        sent(BEDROCK, {"input": "hi", "text": {"format": {"type": "json_object"}}})
    assert err.value.param == "text.format" and "Bedrock" in err.value.message


# A Converse answer with reasoning, in the shape Bedrock's Converse docs show.
BEDROCK_REASONING = {
    "output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "The user wants a number.", "signature": "ErcBCkgIAhABGAIiQ"}}},
        {"text": "42"}]}},
    "stopReason": "end_turn", "usage": {"inputTokens": 10, "outputTokens": 25, "totalTokens": 35},
    "metrics": {"latencyMs": 1000},
}


def test_bedrock_answer_with_a_tool_call():
    body, usage = answer(BEDROCK, fb.converse_body(True), {"input": "hi", "tools": [WEATHER]})
    message, call = body["output"]
    assert message["content"][0]["text"] == fb.REPLY and body["status"] == "completed"
    assert (call["call_id"], call["name"], json.loads(call["arguments"])) == ("tooluse_fake01", "get_weather", fb.TOOL_INPUT)
    assert body["usage"] == {"input_tokens": 37, "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 2},
                             "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 49}
    assert usage.cache_write_tokens == 2


def test_bedrock_reasoning_becomes_a_reasoning_item():
    body, _ = answer(BEDROCK, BEDROCK_REASONING)
    assert [i["type"] for i in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["summary"][0]["text"] == "The user wants a number."


def test_bedrock_errors_map_like_chat():
    err = adapter(BEDROCK).error(ctx(BEDROCK, {"input": "hi"}), 429, [], b'{"message":"Too many requests"}')
    assert (err.status, err.code, err.message) == (429, "rate_limit_exceeded", "Too many requests")


BEDROCK_WIRE = b"".join(fb.stream_frames(with_tool=True))


def test_bedrock_stream_events_in_openai_order():
    evs, usage = streamed(BEDROCK, BEDROCK_WIRE, body={"tools": [WEATHER]})
    assert shape(evs) == ["response.created", "response.in_progress", *TEXT_ITEM, *CALL_ITEM, "response.completed"]
    final = check_stream_invariants(evs)
    assert final["output"][0]["content"][0]["text"] == fb.REPLY
    assert json.loads(final["output"][1]["arguments"]) == fb.TOOL_INPUT
    assert final["usage"]["input_tokens"] == 37 and final["usage"]["input_tokens_details"]["cache_write_tokens"] == 2
    assert usage.prompt_tokens == 37


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(BEDROCK_WIRE)), max_size=8))
def test_bedrock_stream_any_split_gives_the_same_events(cuts):
    assert streamed(BEDROCK, BEDROCK_WIRE, cuts)[0] == streamed(BEDROCK, BEDROCK_WIRE)[0]


def test_bedrock_exception_frame_mid_stream_ends_with_response_failed():
    translator = adapter(BEDROCK).stream(ctx(BEDROCK, {"input": "hi", "stream": True}))
    out = b""
    with pytest.raises(GatewayError) as err:
        for frame in fb.stream_frames(with_tool=False, throttle_midway=True):
            out += translator.feed(frame)
    evs = events(out + translator.error_event(err.value))
    assert [e["type"] for e in evs[-2:]] == ["error", "response.failed"] and err.value.status == 429
    assert evs[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
    assert evs[-1]["response"]["output"] == [], "the text item was still open: nothing completed"


# -- Gemini / Vertex AI -----------------------------------------------------------------------

GEMINI = Provider(name="gem", schema="gemini", base_url="https://gemini.example/v1beta", api_key="gm-key")
VERTEX = Provider(name="vtx", schema="vertex", project="proj-1", location="us-central1")


def test_request_to_gemini_with_tools_a_tool_result_json_mode_and_reasoning():
    body = {"instructions": "Be brief.", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
            "reasoning": {"effort": "high"}, "max_output_tokens": 900,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "input": [{"role": "user", "content": "weather?"},
                      {"type": "function_call", "call_id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                      {"type": "function_call_output", "call_id": "call_0", "output": '{"temp_c": 18}'}]}
    assert sent(GEMINI, body) == {
        "contents": [{"parts": [{"text": "weather?"}], "role": "user"},
                     {"parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}], "role": "model"},
                     {"parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}], "role": "user"}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 900, "responseMimeType": "application/json",
                             "responseJsonSchema": {"type": "object"},
                             "thinkingConfig": {"thinkingBudget": 16384, "includeThoughts": True}},
        "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                                             "parametersJsonSchema": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}}


def test_reasoning_effort_none_turns_gemini_thinking_off():
    assert sent(GEMINI, {"input": "hi", "reasoning": {"effort": "none"}})["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": 0}}


def test_gemini_and_vertex_urls_and_credentials():
    call = adapter(GEMINI).build(ctx(GEMINI, {"input": "hi", "stream": True}, "gemini-2.5-flash"))
    assert call.url == "https://gemini.example/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert ("x-goog-api-key", "gm-key") in call.headers and "key=" not in call.url
    call = adapter(VERTEX).build(ctx(VERTEX, {"input": "hi"}, "gemini-2.5-flash"))
    assert call.url == ("https://us-central1-aiplatform.googleapis.com/v1/projects/proj-1/locations/us-central1"
                        "/publishers/google/models/gemini-2.5-flash:generateContent")


def test_a_tool_result_without_its_call_is_a_400_on_gemini():
    with pytest.raises(GatewayError) as err:
        sent(GEMINI, {"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]})
    assert err.value.status == 400 and err.value.param == "input[0].call_id"  # as the client sent it


@pytest.mark.parametrize("provider", [GEMINI, VERTEX], ids=["gemini", "vertex"])
def test_gemini_answer_with_thoughts_and_a_tool_call(provider):
    body, usage = answer(provider, fg.whole_body("gemini-2.5-flash", True), {"input": "hi", "tools": [WEATHER]})
    reasoning, message, call = body["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "thinking..."}]
    assert message["content"][0]["text"] == fg.REPLY
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", fg.TOOL_ARGS)
    assert re.fullmatch(r"call_[0-9a-f]{16}_0", call["call_id"])  # Gemini sent no id: the gateway's, unique to the answer
    assert body["usage"] == {"input_tokens": 40, "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
                             "output_tokens": 16, "output_tokens_details": {"reasoning_tokens": 6}, "total_tokens": 56}
    assert body["model"] == "gemini-2.5-flash" and usage.reasoning_tokens == 6


# Finish reasons that end a Gemini answer early, in generateContent's documented shape.
@pytest.mark.parametrize(("finish", "reason"), [("MAX_TOKENS", "max_output_tokens"), ("SAFETY", "content_filter")])
def test_gemini_early_finish_is_an_incomplete_response(finish, reason):
    upstream = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Once upon"}]}, "finishReason": finish,
                                "index": 0}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8},
                "modelVersion": "gemini-2.5-pro", "responseId": "abc"}
    body, _ = answer(GEMINI, upstream)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": reason}


def test_gemini_errors_map_like_chat():
    err = adapter(GEMINI).error(ctx(GEMINI, {"input": "hi"}), 429, [],
                                b'{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}')
    assert (err.status, err.message) == (429, "Resource exhausted")
    bad_key = adapter(GEMINI).error(ctx(GEMINI, {"input": "hi"}), 400, [], b'{"error":{"message":"API_KEY_INVALID gm-key"}}')
    assert bad_key.status == 502 and "gm-key" not in bad_key.body().decode()


GEMINI_WIRE = b"".join(fg.sse_bytes("gemini-2.5-flash", with_tool=True))


@pytest.mark.parametrize("provider", [GEMINI, VERTEX], ids=["gemini", "vertex"])
def test_gemini_stream_events_in_openai_order(provider):
    evs, usage = streamed(provider, GEMINI_WIRE, body={"tools": [WEATHER]})
    assert shape(evs) == ["response.created", "response.in_progress", *REASONING_ITEM, *TEXT_ITEM, *CALL_ITEM,
                          "response.completed"]
    final = check_stream_invariants(evs)
    assert final["output"][1]["content"][0]["text"] == fg.REPLY and final["output"][0]["summary"][0]["text"] == "thinking..."
    assert json.loads(final["output"][2]["arguments"]) == fg.TOOL_ARGS
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 6} and usage.reasoning_tokens == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(GEMINI_WIRE)), max_size=8))
def test_gemini_stream_any_split_gives_the_same_events(cuts):
    assert streamed(GEMINI, GEMINI_WIRE, cuts)[0] == streamed(GEMINI, GEMINI_WIRE)[0]


def test_gemini_error_inside_the_stream_ends_with_response_failed():
    first = fg.sse_bytes("gemini-2.5-flash", with_tool=False)[:2]
    error = b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\r\n\r\n'
    translator = adapter(GEMINI).stream(ctx(GEMINI, {"input": "hi", "stream": True}))
    out = b""
    with pytest.raises(GatewayError) as err:
        for piece in [*first, error]:
            out += translator.feed(piece)
    evs = events(out + translator.error_event(err.value))
    assert [e["type"] for e in evs[-2:]] == ["error", "response.failed"] and err.value.status == 503
    assert evs[-1]["response"]["error"]["message"] == "The model is overloaded."


# -- OpenAI pass-through: the same usage detail --------------------------------------------------

OPENAI = Provider(name="up", schema="openai", base_url="https://api.openai.example/v1", api_key="sk-up")
OPENAI_USAGE = {"input_tokens": 300, "input_tokens_details": {"cached_tokens": 256}, "output_tokens": 90,
                "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 390}


def test_openai_passthrough_reads_cached_and_reasoning_tokens_of_a_response():
    body = json.dumps({"id": "resp_1", "object": "response", "status": "completed", "output": [], "usage": OPENAI_USAGE})
    out, usage = adapter(OPENAI).response(ctx(OPENAI, {"input": "hi"}), 200, body.encode())
    assert out == body.encode()
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens,
            usage.total_tokens) == (300, 256, 90, 64, 390)


def test_openai_passthrough_stream_reads_them_from_response_completed():
    completed = {"type": "response.completed", "sequence_number": 3,
                 "response": {"id": "resp_1", "status": "completed", "output": [], "usage": OPENAI_USAGE}}
    wire = b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    translator = adapter(OPENAI).stream(ctx(OPENAI, {"input": "hi", "stream": True}))
    assert translator.feed(wire[:20]) + translator.feed(wire[20:]) + translator.flush() == wire
    assert (translator.usage.cached_tokens, translator.usage.reasoning_tokens) == (256, 64)


def test_a_hook_that_ends_the_stream_on_its_last_chunk_still_gets_response_failed():
    """An output guardrail raising on the chunk that held response.completed drops that chunk:
    the error event must still say the response failed."""
    translator = adapter(ANTHROPIC).stream(ctx(ANTHROPIC, {"input": "hi", "stream": True}))
    produced = translator.feed(ANTHROPIC_WIRE)
    assert events(produced)[-1]["type"] == "response.completed"
    evs = events(translator.error_event(content_policy_violation("g", "email", 502)))
    assert [e["type"] for e in evs] == ["error", "response.failed"]
    assert evs[1]["response"]["status"] == "failed" and evs[1]["response"]["error"]["code"] == "content_policy_violation"


def test_reasoning_under_vllms_newer_field_name_is_a_reasoning_item_streamed_or_not():
    """vLLM (0.11+) names a model's reasoning `reasoning`, keeping `reasoning_content` "for now":
    the Responses API over a chat backend reads either."""
    from tollway.core.providers.responses import wire as rwire
    from tollway.core.providers.responses.output import ResponseIds, output_items
    from tollway.core.providers.responses.stream import ChatStreamToResponses
    from tollway.core.providers.wire import openai as oa

    message = oa.AnswerMessage(content="42", reasoning="thinking it over")
    items = output_items(ResponseIds("chatcmpl-1", NOW), message)
    assert [type(i).__name__ for i in items] == ["ReasoningItem", "MessageItem"]
    assert items[0].summary[0].text == "thinking it over"

    req = rwire.decode_responses(json.dumps({"model": "m", "input": "hi", "stream": True}).encode())
    translator = ChatStreamToResponses(req, "m", NOW, lambda: None)
    chunks = [{"id": "c1", "model": "m", "choices": [{"delta": {"reasoning": "thinking "}}]},
              {"id": "c1", "model": "m", "choices": [{"delta": {"reasoning": "it over"}}]},
              {"id": "c1", "model": "m", "choices": [{"delta": {"content": "42"}, "finish_reason": "stop"}]}]
    out = b"".join(translator.feed(b"data: " + json.dumps(c).encode() + b"\n\n") for c in chunks)
    out += translator.feed(b"data: [DONE]\n\n") + translator.flush()
    evs = events(out)
    deltas = "".join(e["delta"] for e in evs if e["type"] == "response.reasoning_summary_text.delta")
    assert deltas == "thinking it over"

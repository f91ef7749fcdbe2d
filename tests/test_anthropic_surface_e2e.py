"""The Anthropic Messages surface over an OpenAI-compatible upstream, end to end: the official
`anthropic` SDK against a real gateway, upstreams speaking OpenAI's wire format. What an
Anthropic client is owed whatever the upstream sends (tool input it can parse) and what the
upstream is sent for an Anthropic request (the text as the client wrote it)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

WEATHER = {"name": "get_weather", "description": "Weather of a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, openai_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - name: hostile
    schema: openai
    base_url: {hostile.url}/v1
    api_key: {UPSTREAM_SECRET}
  - name: up
    schema: openai
    base_url: {openai_upstream.url}
    api_key: {UPSTREAM_SECRET}
models:
  - name: scripted
    targets: [{{provider: hostile, model: scripted}}]
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""")
    yield process
    process.stop()


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    doc = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _script_stream(hostile: HostileUpstream, *chunks: bytes) -> None:
    hostile.script(Answer(headers=(("content-type", "text/event-stream"),), chunks=chunks, framing="chunked"))


def _call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": arguments} | ({"name": name} if name else {})
    return {"index": index, "function": fn} | ({"id": id, "type": "function"} if id else {})


def _tool_call_stream(*calls: dict[str, Any], finish: str = "tool_calls") -> tuple[bytes, ...]:
    return (_chunk({"role": "assistant", "content": "Checking."}), *(_chunk({"tool_calls": [c]}) for c in calls),
            _chunk({}, finish), _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}),
            b"data: [DONE]\n\n")


# -- tool input the SDK can parse, whatever JSON the upstream model wrote ---------------------

@pytest.mark.parametrize("pieces", [
    ['{"city" "Paris"}'],            # a missing colon: the SDK's parser raised on this delta
    ['{"city": ', "Paris}"],         # an unquoted string, cut over two deltas
    ["Paris"],                       # not JSON at all (a small model's "arguments")
])
def test_malformed_streamed_tool_arguments_reach_the_sdk_as_raw_arguments(ant, hostile, pieces):
    """Anthropic validates tool input before it streams it (only its fine-grained-tool-streaming
    beta sends unvalidated JSON), so the SDK parses each input_json_delta and raises on bad JSON,
    losing the whole answer. The stream keeps such arguments as the JSON answer does:
    `{"_raw_arguments": text}`, with the rest of the answer intact."""
    first, *rest = pieces
    _script_stream(hostile, *_tool_call_stream(_call(0, first, "call_a", "get_weather"),
                                               *(_call(0, p) for p in rest)))
    with ant.messages.stream(model="scripted", max_tokens=50, tools=[WEATHER],
                             messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        message = s.get_final_message()
    text, tool = message.content
    assert text.text == "Checking." and message.stop_reason == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_a", "get_weather", {"_raw_arguments": "".join(pieces)})


def test_valid_streamed_tool_arguments_are_the_input_as_sent(ant, hostile):
    _script_stream(hostile, *_tool_call_stream(_call(0, '{"ci', "call_a", "get_weather"), _call(0, 'ty": "Paris"}'),
                                               _call(1, '{"city": "Rome"}', "call_b", "get_weather")))
    with ant.messages.stream(model="scripted", max_tokens=50, tools=[WEATHER],
                             messages=[{"role": "user", "content": "Weather in Paris and Rome?"}]) as s:
        message = s.get_final_message()
    assert [(b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("call_a", {"city": "Paris"}), ("call_b", {"city": "Rome"})]


FINE_GRAINED = "fine-grained-tool-streaming-2025-05-14"


@pytest.mark.parametrize("beta, expected", [
    (None, ['{"city": "Paris"}']),                          # checked whole, as Anthropic streams tool input
    (FINE_GRAINED, ['{"ci', 'ty": "Paris"}']),              # as it comes: what this beta asks Anthropic for
    (f"token-efficient-tools-2025-02-19,{FINE_GRAINED}", ['{"ci', 'ty": "Paris"}']),
])
def test_tool_input_streams_as_it_comes_only_for_the_fine_grained_beta(ant, hostile, beta, expected):
    """A client that sends Anthropic's fine-grained-tool-streaming beta (Claude Code does) asks for
    tool input without buffering or validation, and gets it: every piece as the upstream sent it."""
    _script_stream(hostile, *_tool_call_stream(_call(0, '{"ci', "call_a", "get_weather"), _call(0, 'ty": "Paris"}')))
    with ant.messages.stream(model="scripted", max_tokens=50, tools=[WEATHER],
                             messages=[{"role": "user", "content": "Weather in Paris?"}],
                             extra_headers={"anthropic-beta": beta} if beta else None) as s:
        partials = [event.partial_json for event in s if event.type == "input_json"]
        message = s.get_final_message()
    assert partials == expected and message.content[1].input == {"city": "Paris"}


# -- the text the upstream is sent --------------------------------------------------------

def _sent(openai_upstream: FakeOpenAI) -> list[dict[str, Any]]:
    return openai_upstream.last("/chat/completions")["body"]["messages"]


def test_text_blocks_stay_apart_when_joined_into_one_openai_message(ant, openai_upstream):
    """An Anthropic message's text blocks are separate pieces of text; joined with nothing,
    "Hello" + "world" was "Helloworld" (and a `</system-reminder>` ran into the user's first
    word). They are joined with a newline, as an OpenAI-compatible server (vLLM) joins the text
    parts of one message itself."""
    ant.messages.create(
        model="gpt-4o-mini", max_tokens=10,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Paris"}},
                                              {"type": "text", "text": "Done."}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "Sunny"}, {"type": "text", "text": "20 C"}]}]},
        ])
    system, user, assistant, tool = _sent(openai_upstream)
    assert system == {"role": "system", "content": "Be brief.\nAnswer in French."}
    assert user["content"] == "Hello\nworld"
    assert assistant["content"] == "Let me check.\nDone."
    assert (tool["role"], tool["content"]) == ("tool", "Sunny\n20 C")


# -- an OpenAI model's refusal ------------------------------------------------------------

REFUSAL = "I'm sorry, I can't help with that."


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_refusal_is_anthropics_refusal_with_its_text(ant, hostile, stream):
    """OpenAI puts a refusal in `refusal`, not `content` (with finish_reason "stop"): it was
    dropped, and the client got an empty answer that said `end_turn`. Anthropic's answer for a
    declined request says `refusal`; the text goes in a text block, as the model wrote it."""
    if stream:
        _script_stream(hostile, _chunk({"role": "assistant", "content": None, "refusal": ""}),
                       _chunk({"refusal": REFUSAL[:9]}), _chunk({"refusal": REFUSAL[9:]}), _chunk({}, "stop"),
                       _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}),
                       b"data: [DONE]\n\n")
        with ant.messages.stream(model="scripted", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            message = s.get_final_message()
    else:
        answer = {"id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "scripted", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None, "refusal": REFUSAL}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
        hostile.script(Answer(headers=(("content-type", "application/json"),), chunks=(json.dumps(answer).encode(),)))
        message = ant.messages.create(model="scripted", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert [(b.type, b.text) for b in message.content] == [("text", REFUSAL)]
    assert message.stop_reason == "refusal"


# -- a generation the upstream gave up on ---------------------------------------------------

@pytest.mark.parametrize("finish", ["abort", "error"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_generation_vllm_aborted_is_an_error_not_end_turn(ant, hostile, finish, stream):
    """vLLM's engine ends a request it aborted or failed with finish_reason "abort" or "error";
    read as `end_turn`, the client took a cut answer for a whole one. Anthropic ends a failed
    generation with an error (an `error` event mid-stream), and so does the gateway."""
    if stream:
        _script_stream(hostile, _chunk({"role": "assistant", "content": "The answer"}), _chunk({}, finish),
                       b"data: [DONE]\n\n")
    else:
        answer = {"id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "scripted", "choices": [
            {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "The answer"}}]}
        hostile.script(Answer(headers=(("content-type", "application/json"),), chunks=(json.dumps(answer).encode(),)))
    with pytest.raises(anthropic.APIStatusError) as failed:
        if stream:
            with ant.messages.stream(model="scripted", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
                s.get_final_message()
        else:
            ant.messages.create(model="scripted", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    body = failed.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "api_error"
    assert f"'{finish}'" in body["error"]["message"]

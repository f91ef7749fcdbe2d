"""The Responses API surface over translated providers, end to end: the official `openai` SDK
against a real gateway, the Anthropic fake (which records what it was sent) and the hostile
upstream's scripted Anthropic answers (its real SSE bytes). What the upstream is sent for a
Responses request (the text as the client wrote it), and what a Responses client is owed
whatever the upstream answers."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes import anthropic_upstream as fa
from tests.fakes import gemini_upstream as fg
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, anthropic_upstream: FakeAnthropic, gemini: FakeGemini) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - {{name: ant, schema: anthropic, base_url: {anthropic_upstream.url}, api_key: {UPSTREAM_SECRET}}}
  - {{name: hostile, schema: anthropic, base_url: {hostile.url}, api_key: {UPSTREAM_SECRET}}}
  - {{name: gem, schema: gemini, base_url: {gemini.url}/v1beta, api_key: {fg.API_KEY}}}
models:
  - {{name: claude, targets: [{{provider: ant, model: claude-sonnet-4-5}}]}}
  - {{name: scripted, targets: [{{provider: hostile, model: scripted}}]}}
  - {{name: gemini-flash, targets: [{{provider: gem, model: gemini-2.5-flash}}]}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}
""")
    yield process
    process.stop()


# -- what the upstream is sent ------------------------------------------------------------

def test_text_parts_of_one_input_message_stay_apart(oai: openai.OpenAI, anthropic_upstream: FakeAnthropic):
    """A message's text parts, and a function_call_output's, are separate pieces of text:
    joined with nothing, "Hello" + "world" reached the model as "Helloworld"."""
    oai.responses.create(model="claude", input=[
        {"role": "system", "content": [{"type": "input_text", "text": "Be brief."},
                                       {"type": "input_text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_text", "text": "world"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Let me check."},
                                          {"type": "output_text", "text": "One moment."}]},
        {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_w1",
         "output": [{"type": "input_text", "text": "Sunny"}, {"type": "input_text", "text": "20 C"}]},
    ])
    body = anthropic_upstream.last()["body"]
    assert body["system"] == [{"type": "text", "text": "Be brief.\nAnswer in French."}]
    user, assistant, result = body["messages"]
    assert user["content"] == [{"type": "text", "text": "Hello\nworld"}]
    assert assistant["content"][0] == {"type": "text", "text": "Let me check.\nOne moment."}
    assert result["content"][0]["content"] == "Sunny\n20 C"


# -- what the client is owed --------------------------------------------------------------

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
MESSAGE = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
TOOL_USE = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}


def _script_anthropic(hostile: HostileUpstream, stream: bool, stop_reason: str, answer: list[dict[str, Any]],
                      partial_json: str = "") -> None:
    """The hostile upstream answers `scripted` as Anthropic does: `answer`'s content blocks
    (a tool_use's input streamed as `partial_json`), ending with `stop_reason`."""
    if not stream:
        body = {**MESSAGE, "content": answer, "stop_reason": stop_reason, "usage": {"input_tokens": 12, "output_tokens": 9}}
        hostile.script(Answer(headers=(("content-type", "application/json"),), chunks=(json.dumps(body).encode(),)))
        return
    events = [fa.sse("message_start", {"type": "message_start", "message": MESSAGE})]
    for i, block in enumerate(answer):
        start = {**block, "input": {}} if block["type"] == "tool_use" else {**block, "text": ""}
        events.append(fa.sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}))
        delta = ({"type": "input_json_delta", "partial_json": partial_json} if block["type"] == "tool_use"
                 else {"type": "text_delta", "text": block["text"]})
        events.append(fa.sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        events.append(fa.sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(fa.sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                           "stop_sequence": None}, "usage": {"output_tokens": 9}}))
    events.append(fa.sse("message_stop", {"type": "message_stop"}))
    hostile.script(Answer(headers=(("content-type", "text/event-stream"),), chunks=tuple(events), framing="chunked"))


def _respond(oai: openai.OpenAI, stream: bool) -> Any:
    if not stream:
        return oai.responses.create(model="scripted", input="Weather in Paris?", tools=[WEATHER], max_output_tokens=9)
    events = list(oai.responses.create(model="scripted", input="Weather in Paris?", tools=[WEATHER],
                                       max_output_tokens=9, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events[-1].response


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("stop_reason", "reason"), [("max_tokens", "max_output_tokens"),
                                                     ("model_context_window_exceeded", "max_output_tokens"),
                                                     ("refusal", "content_filter")])
def test_an_answer_claude_stopped_early_is_incomplete_and_says_why(oai, hostile, stream, stop_reason, reason):
    """What Claude wrote before max_tokens (or its context window, or its refusal) stopped it is
    kept, and the response says it is not whole: `incomplete`, with OpenAI's reason."""
    _script_anthropic(hostile, stream, stop_reason, [{"type": "text", "text": "The answer is"}])
    r = _respond(oai, stream)
    assert r.status == "incomplete" and r.incomplete_details.reason == reason
    assert r.output_text == "The answer is"
    assert r.usage.output_tokens == 9


# -- errors name the Responses field --------------------------------------------------------

def test_an_output_limit_too_small_to_think_in_is_a_400_naming_max_output_tokens(oai):
    """Claude's thinking counts in its output limit, so a limit below its smallest budget is
    refused by the chat translator, which named its own field: `max_tokens`, which a Responses
    client never sent. The error names the field the client wrote."""
    with pytest.raises(openai.BadRequestError) as bad:
        oai.responses.create(model="claude", input="Think first.", reasoning={"effort": "low"}, max_output_tokens=500)
    assert bad.value.body["param"] == "max_output_tokens"


def test_a_400_about_an_input_item_names_it_as_the_client_sent_it(oai):
    """Gemini names a tool result by its call's function, so a result whose call is not in the
    input is refused by the chat translator, which named the chat message it had made of it
    (`messages[1]`, after the instructions' system message). The error names the input item."""
    with pytest.raises(openai.BadRequestError) as bad:
        oai.responses.create(model="gemini-flash", instructions="Be brief.", input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call_output", "call_id": "call_9", "output": '{"temp_c": 18}'}])
    err = bad.value.body
    assert err["param"] == "input[1].call_id"
    assert "input[1].call_id" in err["message"] and "messages[" not in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_cut_off_by_max_output_tokens_is_incomplete(oai, hostile, stream):
    """A call Claude was writing when max_tokens stopped it has half its arguments. Said to be
    `completed`, the client ran the tool with them; OpenAI says `incomplete`
    (`max_output_tokens`), as for cut-off text."""
    _script_anthropic(hostile, stream, "max_tokens", [{"type": "text", "text": "Let me check."},
                                                      {**TOOL_USE, "input": {"city": "Pa"}}], '{"city": "Pa')
    r = _respond(oai, stream)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[-1].type == "function_call"

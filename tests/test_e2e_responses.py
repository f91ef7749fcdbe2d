"""The Responses API (`/v1/responses`) end to end on translated providers: the official openai
SDK's `responses.create` and `responses.stream` through a real gateway to the Anthropic, Bedrock
and Gemini/Vertex fakes (each speaking its real wire format), with function tools, a tool-result
round trip, usage that the ledger and the limits agree with, errors in the Responses shape, and
`previous_response_id` refused."""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes import anthropic_upstream as fa
from tests.fakes import bedrock_upstream as fb
from tests.fakes import gemini_upstream as fg
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import FakeGemini, service_account_file
from tests.harness import ADMIN_KEY, OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_ledger_e2e import record_of

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@dataclass(frozen=True)
class Case:
    """One translated provider as the fakes answer: its reply, tool arguments and usage."""

    model: str  # the gateway's model name
    reply: str
    tool_args: dict[str, Any]
    input_tokens: int
    output_tokens: int
    cached: int
    cache_write: int = 0
    reasoning: int = 0
    reasoning_text: str = ""


CASES = [
    Case("claude", fa.REPLY, fa.TOOL_INPUT, 21 + 4 + 8, fa.OUTPUT_TOKENS, 8, 4),
    Case("bedrock-claude", fb.REPLY, fb.TOOL_INPUT, 30 + 5 + 2, 12, 5, 2),
    Case("gemini-flash", fg.REPLY, fg.TOOL_ARGS, 40, 10 + 6, 16, 0, 6, "thinking..."),
    Case("vertex-flash", fg.REPLY, fg.TOOL_ARGS, 40, 10 + 6, 16, 0, 6, "thinking..."),
]
IDS = [c.model for c in CASES]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger") / "ledger.db"


@pytest.fixture(scope="module")
def gw(anthropic_upstream: FakeAnthropic, bedrock: FakeBedrock, gemini: FakeGemini, db: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    sa = service_account_file(tmp_path_factory.mktemp("sa"), gemini.url + "/token")
    process = GatewayProcess(f"""
providers:
  - {{name: ant, schema: anthropic, base_url: {anthropic_upstream.url}, api_key: {UPSTREAM_SECRET}}}
  - name: aws
    schema: bedrock
    region: {fb.REGION}
    base_url: {bedrock.url}
    credentials: {{access_key_id: {fb.ACCESS_KEY}, secret_access_key: "{fb.SECRET_KEY}"}}
  - {{name: gem, schema: gemini, base_url: {gemini.url}/v1beta, api_key: {fg.API_KEY}}}
  - name: vtx
    schema: vertex
    project: proj-1
    location: us-central1
    base_url: {gemini.url}/v1
    credentials: {{service_account_file: "{sa}"}}
models:
  - {{name: claude, targets: [{{provider: ant, model: claude-sonnet-4-5}}]}}
  - {{name: bedrock-claude, targets: [{{provider: aws, model: "{BEDROCK_MODEL}"}}]}}
  - {{name: gemini-flash, targets: [{{provider: gem, model: gemini-2.5-flash}}]}}
  - {{name: vertex-flash, targets: [{{provider: vtx, model: gemini-2.5-flash}}]}}
  - {{name: rate-limited, targets: [{{provider: ant}}]}}
  - {{name: stream-error, targets: [{{provider: ant}}]}}
  - {{name: throttled, targets: [{{provider: aws}}]}}
  - {{name: stream-throttled, targets: [{{provider: aws}}]}}
  - {{name: exhausted, targets: [{{provider: gem}}]}}
  - {{name: claude-parallel, targets: [{{provider: ant, model: parallel-calls}}]}}
  - {{name: gemini-parallel, targets: [{{provider: gem, model: parallel-calls}}]}}
  - {{name: guarded-mask, targets: [{{provider: ant, model: claude-sonnet-4-5}}]}}
  - {{name: guarded-block, targets: [{{provider: aws, model: "{BEDROCK_MODEL}"}}]}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}
  - name: metered
    key_hash: "{key_hash(OTHER_KEY)}"
    limits: [{{total_tokens: 1000000, per: 30d}}]
guardrails:
  - {{name: no-fakes, type: regex, deny: ["(?i)fake"], action: mask, apply_to: [output], scope: {{models: [guarded-mask]}}}}
  - {{name: no-weather, type: regex, deny: ["Paris"], action: block, apply_to: [output], scope: {{models: [guarded-block]}}}}
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
""")
    yield process
    process.stop()


def _check_usage(usage: Any, case: Case) -> None:
    assert usage.input_tokens == case.input_tokens and usage.output_tokens == case.output_tokens
    assert usage.total_tokens == case.input_tokens + case.output_tokens
    assert usage.input_tokens_details.cached_tokens == case.cached
    assert usage.input_tokens_details.model_dump().get("cache_write_tokens", 0) == case.cache_write
    assert usage.output_tokens_details.reasoning_tokens == case.reasoning


def _check_ledger(db: Path, request_id: str, usage: Any, api: str = "responses") -> None:
    row = record_of(db, request_id)
    assert row["status"] == 200 and row["api"] == api
    assert row["input_tokens"] == usage.input_tokens and row["output_tokens"] == usage.output_tokens
    assert row["cached_input_tokens"] == usage.input_tokens_details.cached_tokens
    assert row["cache_write_tokens"] == usage.input_tokens_details.model_dump().get("cache_write_tokens", 0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_non_stream_with_function_tools(oai, db, case):
    raw = oai.responses.with_raw_response.create(model=case.model, instructions="Be brief.", input="Weather in Paris?",
                                                 tools=[WEATHER])
    r = raw.parse()
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == case.reply and r.instructions == "Be brief." and r.store is False
    calls = [item for item in r.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"] and json.loads(calls[0].arguments) == case.tool_args
    assert calls[0].call_id and calls[0].id.startswith("fc_")
    kinds = [item.type for item in r.output]
    assert kinds == (["reasoning"] if case.reasoning_text else []) + ["message", "function_call"]
    if case.reasoning_text:
        assert r.output[0].summary[0].text == case.reasoning_text
    _check_usage(r.usage, case)
    _check_ledger(db, raw.headers["x-request-id"], r.usage)


# The event order OpenAI's Responses stream follows for a text answer, then a function call.
TEXT_EVENTS = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
               "response.output_text.done", "response.content_part.done", "response.output_item.done"]
CALL_EVENTS = ["response.output_item.added", "response.function_call_arguments.delta",
               "response.function_call_arguments.done", "response.output_item.done"]
REASONING_EVENTS = ["response.output_item.added", "response.reasoning_summary_part.added",
                    "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
                    "response.reasoning_summary_part.done", "response.output_item.done"]


def _collapsed(types: list[str]) -> list[str]:
    """Event types with runs of the same delta event counted once."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_events_in_openai_order(oai, db, case):
    raw = oai.responses.with_raw_response.create(model=case.model, input="Weather in Paris?", tools=[WEATHER], stream=True)
    events = list(raw.parse())
    types = [e.type for e in events]
    expected = ["response.created", "response.in_progress"] + (REASONING_EVENTS if case.reasoning_text else [])
    assert _collapsed(types) == expected + TEXT_EVENTS + CALL_EVENTS + ["response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == case.reply
    done = events[-1].response
    assert done.status == "completed" and done.output_text == case.reply and done.id == events[0].response.id
    call = done.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == case.tool_args
    args_done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert args_done.item_id == call.id and args_done.output_index == len(done.output) - 1
    for e in events:  # every item event names the item at its output_index
        if hasattr(e, "item_id") and hasattr(e, "output_index"):
            assert e.item_id == done.output[e.output_index].id
    _check_usage(done.usage, case)
    _check_ledger(db, raw.headers["x-request-id"], done.usage)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sdk_stream_helper_assembles_the_response(oai, case):
    """`responses.stream` rebuilds the response from the events and checks their item ids and
    indexes as it goes: a translated stream must satisfy it as OpenAI's does."""
    with oai.responses.stream(model=case.model, input="Weather in Paris?", tools=[WEATHER]) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == case.reply
    assert final.output[-1].type == "function_call" and json.loads(final.output[-1].arguments) == case.tool_args


CLOCK = {"type": "function", "name": "get_time", "description": "Local time in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.mark.parametrize("model", ["claude-parallel", "gemini-parallel"])
def test_parallel_calls_stream_each_with_its_own_call_id_and_name(oai, model):
    """Two calls in one streamed answer: each item's closing events name that call, not the one
    after it. The SDK's helper checks a done item against the one it saw added."""
    with oai.responses.stream(model=model, input="Weather and time in Paris?", tools=[WEATHER, CLOCK]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"] and calls[0].call_id != calls[1].call_id
    added = [(e.item.call_id, e.item.name) for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    done = [(e.item.call_id, e.item.name) for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"]
    assert added == done == [(c.call_id, c.name) for c in calls]
    args_done = [e.name for e in events if e.type == "response.function_call_arguments.done"]
    assert args_done == ["get_weather", "get_time"]


TOOL_ROUND = [
    {"role": "user", "content": "Weather in Paris?"},
    {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
    {"type": "function_call_output", "call_id": "call_w1", "output": '{"temp_c": 18}'},
]


def test_tool_result_round_trip_to_anthropic(oai, anthropic_upstream):
    r = oai.responses.create(model="claude", input=TOOL_ROUND, tools=[WEATHER], instructions="Be brief.")
    assert r.output_text == fa.REPLY
    body = anthropic_upstream.last()["body"]
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_w1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w1", "content": '{"temp_c": 18}'}]}]
    assert body["tools"] == [{"name": "get_weather", "input_schema": WEATHER["parameters"],
                              "description": "Weather in a city"}]


def test_tool_result_round_trip_to_bedrock(oai, bedrock):
    r = oai.responses.create(model="bedrock-claude", input=TOOL_ROUND, tools=[WEATHER], instructions="Be brief.")
    assert r.output_text == fb.REPLY
    sent = bedrock.last()
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 "), "SigV4-signed, checked by the fake"
    assert sent["body"]["system"] == [{"text": "Be brief."}]
    assert sent["body"]["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "call_w1", "name": "get_weather",
                                                       "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_w1", "content": [{"text": '{"temp_c": 18}'}]}}]}]


def test_tool_result_round_trip_to_gemini(oai, gemini):
    """The SDK's own round trip: the function call the model made goes back as input, with its
    output; Gemini, which has no call ids, gets the result under the call's function name."""
    first = oai.responses.create(model="gemini-flash", input="Weather in Paris?", tools=[WEATHER],
                                 reasoning={"effort": "low"})
    call = next(item for item in first.output if item.type == "function_call")
    assert gemini.requests[-1]["body"]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048,
                                                                                 "includeThoughts": True}
    history = [{"role": "user", "content": "Weather in Paris?"}, *[item.model_dump() for item in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}]
    second = oai.responses.create(model="gemini-flash", input=history, tools=[WEATHER])
    assert second.output_text == fg.REPLY
    contents = gemini.requests[-1]["body"]["contents"]
    assert contents[1] == {"role": "model", "parts": [{"text": fg.REPLY},
                                                      {"functionCall": {"name": "get_weather", "args": fg.TOOL_ARGS}}]}
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                                          "response": {"temp_c": 18}}}]}


def test_reasoning_effort_turns_on_anthropic_thinking(oai, anthropic_upstream):
    oai.responses.create(model="claude", input="Think first.", reasoning={"effort": "low"}, max_output_tokens=6000)
    body = anthropic_upstream.last()["body"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and body["max_tokens"] == 6000


def test_previous_response_id_is_refused_with_a_clear_400(oai):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.responses.create(model="claude", input="and then?", previous_response_id="resp_abc123")
    err = bad.value.body
    assert err["param"] == "previous_response_id" and err["code"] == "unsupported_parameter"
    assert "keeps no" in err["message"] and "input" in err["message"]


def test_hosted_tools_are_refused_naming_the_tool(oai):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.responses.create(model="claude", input="news?", tools=[{"type": "web_search"}])
    assert bad.value.body["param"] == "tools[0].type"


def test_provider_errors_come_back_as_openai_errors(oai):
    with pytest.raises(openai.RateLimitError) as rate:
        oai.responses.create(model="rate-limited", input="x")
    assert rate.value.response.headers["retry-after"] == "7"
    assert rate.value.body["type"] == "rate_limit_error" and rate.value.body["message"]
    with pytest.raises(openai.RateLimitError) as throttled:
        oai.responses.create(model="throttled", input="x")
    assert throttled.value.body["message"] == "Too many requests, please wait before trying again."
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(model="exhausted", input="x")


@pytest.mark.parametrize(("model", "message"), [
    ("stream-error", "Overloaded"), ("stream-throttled", "Too many tokens, please wait before trying again.")])
def test_mid_stream_provider_error_ends_with_error_and_response_failed(oai, model, message):
    events = list(oai.responses.create(model=model, input="x", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2:] == ["error", "response.failed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.message == events[-2].message == message


def _metered_used(gw: GatewayProcess) -> float:
    req = urllib.request.Request(gw.url + "/admin/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return float(json.loads(resp.read())["keys"]["metered"][0]["used"])


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_usage_drawn_from_the_limits_equals_the_sdk_usage(gw, case, stream):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    before = _metered_used(gw)
    if stream:
        usage = list(client.responses.create(model=case.model, input="hello", stream=True))[-1].response.usage
    else:
        usage = client.responses.create(model=case.model, input="hello").usage
    assert usage.total_tokens == case.input_tokens + case.output_tokens
    # A stream settles just after its last byte, so the bucket is read until it has; it refills
    # ~0.4 token/s, so within the test's second what it holds moved by the usage, give or take 2.
    deadline, drawn = time.monotonic() + 3, 0.0
    while time.monotonic() < deadline:
        drawn = _metered_used(gw) - before
        if drawn == pytest.approx(usage.total_tokens, abs=2):
            break
        time.sleep(0.05)
    assert drawn == pytest.approx(usage.total_tokens, abs=2)


def test_an_output_guardrail_masks_a_translated_stream_in_every_event(oai):
    """The guardrails read a translated provider's Responses stream as they read OpenAI's: the
    deltas are masked and every text the stream repeats (the .done events, the final response)
    says what the deltas said."""
    events = list(oai.responses.create(model="guarded-mask", input="hi", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "fake" not in text.lower() and text.startswith("Hello from the ") and text.endswith(" Anthropic upstream")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text and events[-1].type == "response.completed"
    assert events[-1].response.output_text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_an_output_guardrail_block_ends_a_translated_stream_with_the_responses_error(oai):
    events = list(oai.responses.create(model="guarded-block", input="Weather in Paris?", tools=[WEATHER], stream=True))
    assert events[-2].type == "error" and "no-weather" in events[-2].message
    assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
    assert not any(e.type == "response.completed" for e in events)
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert "Paris" not in arguments

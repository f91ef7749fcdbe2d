"""End to end through a real gateway: Anthropic as a provider (official openai SDK), and the
`/anthropic/v1/messages` client API (official anthropic SDK) backed by OpenAI and Anthropic."""
from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fakes import anthropic_upstream as fa
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import REPLY as OPENAI_REPLY
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.vllm_replica import REPLY as VLLM_REPLY
from tests.fakes.vllm_replica import FakeVLLMReplica
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeVLLMReplica]:
    replica = FakeVLLMReplica("vllm-a")
    yield replica
    replica.kill()


@pytest.fixture(scope="module")
def gw(anthropic_upstream: FakeAnthropic, openai_upstream: FakeOpenAI, vllm: FakeVLLMReplica) -> Iterator[GatewayProcess]:
    misbehaving = "\n".join(f"  - name: {m}\n    targets: [{{provider: claude}}]"
                            for m in ("overloaded", "rate-limited", "bad-key", "stream-error", "no-usage"))
    process = GatewayProcess(f"""
providers:
  - name: claude
    schema: anthropic
    base_url: {anthropic_upstream.url}
    api_key: {UPSTREAM_SECRET}
  - name: up
    schema: openai
    base_url: {openai_upstream.url}
    api_key: {UPSTREAM_SECRET}
  - name: vllm
    schema: openai
    base_url: {vllm.url}
  - name: azure
    schema: azure_openai
    base_url: {openai_upstream.url.removesuffix("/v1")}
    api_version: "2024-10-21"
    api_key: {UPSTREAM_SECRET}
models:
  - name: claude-sonnet
    targets: [{{provider: claude, model: claude-sonnet-4-5}}]
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
  - name: o3
    targets: [{{provider: up, model: o3}}]
  - name: llama
    targets: [{{provider: vllm}}]
  - name: azure-gpt-5
    targets: [{{provider: azure, model: gpt-5}}]
  - name: sturdy
    targets: [{{provider: claude, model: overloaded, priority: 0}}, {{provider: up, model: gpt-4o-mini, priority: 1}}]
{misbehaving}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""")
    yield process
    process.stop()


# -- OpenAI client -> Anthropic provider -----------------------------------------------

def test_openai_sdk_non_stream_via_anthropic(oai, anthropic_upstream):
    r = oai.chat.completions.create(model="claude-sonnet", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "user", "content": "there"}])
    assert r.choices[0].message.content == fa.REPLY and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 21 + 4 + 8 and r.usage.completion_tokens == fa.OUTPUT_TOKENS
    assert r.usage.prompt_tokens_details.cached_tokens == 8
    sent = anthropic_upstream.last()
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET and TEST_KEY not in json.dumps(sent)
    assert sent["body"]["system"] == [{"type": "text", "text": "Be brief."}]
    assert sent["body"]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                     {"type": "text", "text": "there"}]}]
    assert sent["body"]["model"] == "claude-sonnet-4-5" and sent["body"]["max_tokens"] > 0


def test_openai_sdk_stream_via_anthropic(oai):
    chunks = list(oai.chat.completions.create(model="claude-sonnet", stream=True, stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fa.REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == 33 and chunks[-1].usage.completion_tokens == fa.OUTPUT_TOKENS


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_tools_via_anthropic(oai, anthropic_upstream, stream):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        chunks = list(oai.chat.completions.create(model="claude-sonnet", stream=True, messages=messages, tools=[WEATHER_TOOL]))
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        name, args = calls[0].function.name, "".join(tc.function.arguments or "" for tc in calls)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        r = oai.chat.completions.create(model="claude-sonnet", messages=messages, tools=[WEATHER_TOOL], tool_choice="required")
        call = r.choices[0].message.tool_calls[0]
        name, args, finish = call.function.name, call.function.arguments, [r.choices[0].finish_reason]
        assert anthropic_upstream.last()["body"]["tool_choice"] == {"type": "any"}
    assert name == "get_weather" and json.loads(args) == fa.TOOL_INPUT and finish == ["tool_calls"]
    assert anthropic_upstream.last()["body"]["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]


def test_openai_sdk_tool_result_round_trip(oai, anthropic_upstream):
    oai.chat.completions.create(model="claude-sonnet", tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}])
    turns = anthropic_upstream.last()["body"]["messages"]
    assert turns[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]}
    assert turns[2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}



# OpenAI takes empty text ({"role": "system", "content": ""} is common); Anthropic refuses an
# empty or whitespace-only text block with a 400, as the fake does.
BLANK_TEXT_MESSAGES = [
    {"role": "system", "content": ""},
    {"role": "developer", "content": "  \n"},
    {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
    {"role": "assistant", "content": " "},
    {"role": "user", "content": [{"type": "text", "text": "\t"}]},
    {"role": "user", "content": "there"},
]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_blank_text_is_left_out_for_anthropic(oai, anthropic_upstream, stream):
    r = oai.chat.completions.create(model="claude-sonnet", stream=stream, messages=BLANK_TEXT_MESSAGES)
    text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
    assert text == fa.REPLY
    sent = anthropic_upstream.last()["body"]
    assert "system" not in sent
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                             {"type": "text", "text": "there"}]}]

# "Hello from the fake Anthropic upstream" (fa.REPLY) is 7 tokens in o200k_base.
REPLY_TOKENS = 7


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_answer_without_usage_is_counted_from_its_text(oai, gw, stream):
    # An Anthropic-compatible upstream that reports no usage is counted, as every other answer
    # without usage is, not billed 0 tokens.
    raw = oai.chat.completions.with_raw_response.create(model="no-usage", stream=stream,
                                                        messages=[{"role": "user", "content": "hi"}])
    answer = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    else:
        text = answer.choices[0].message.content
    line = gw.log_line(raw.headers["x-request-id"])
    assert text == fa.REPLY and line["completion_tokens"] == REPLY_TOKENS and line["prompt_tokens"] >= 1


def test_anthropic_errors_become_openai_errors(oai):
    with pytest.raises(openai.RateLimitError) as rate:
        oai.chat.completions.create(model="rate-limited", messages=[{"role": "user", "content": "x"}])
    assert rate.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.InternalServerError) as over:
        oai.chat.completions.create(model="overloaded", messages=[{"role": "user", "content": "x"}])
    assert over.value.status_code == 503
    with pytest.raises(openai.APIStatusError) as auth:
        oai.chat.completions.create(model="bad-key", messages=[{"role": "user", "content": "x"}])
    assert auth.value.status_code == 502 and UPSTREAM_SECRET not in auth.value.response.text
    assert "credential" in auth.value.message


def test_unsupported_feature_is_400_naming_field(oai):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="claude-sonnet", n=2, messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["param"] == "n"


def test_overloaded_anthropic_falls_back_to_next_priority(oai):
    r = oai.chat.completions.create(model="sturdy", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == OPENAI_REPLY


def test_error_event_mid_stream_reaches_openai_client(oai):
    with pytest.raises(openai.APIError):
        list(oai.chat.completions.create(model="stream-error", stream=True, messages=[{"role": "user", "content": "x"}]))


# -- Anthropic client -> OpenAI-compatible and Anthropic providers ---------------------------

def test_anthropic_sdk_over_openai_backend(ant, openai_upstream):
    m = ant.messages.create(model="gpt-4o-mini", max_tokens=100, system="Be brief.",
                            messages=[{"role": "user", "content": "hello there"}])
    assert m.content[0].text == OPENAI_REPLY and m.stop_reason == "end_turn"
    assert m.usage.output_tokens == 9 and m.usage.input_tokens == 4
    sent = openai_upstream.last("/chat/completions")["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert sent["max_completion_tokens"] == 100 and "max_tokens" not in sent


@pytest.mark.parametrize("model", ["o3", "azure-gpt-5"])
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_over_an_openai_reasoning_model(ant, openai_upstream, model, stream):
    # Anthropic's required max_tokens is OpenAI's max_completion_tokens: OpenAI's reasoning
    # models (o-series, gpt-5), on Azure too, refuse the older max_tokens with a 400.
    if stream:
        with ant.messages.stream(model=model, max_tokens=1024, messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join(s.text_stream)
    else:
        text = ant.messages.create(model=model, max_tokens=1024, messages=[{"role": "user", "content": "hi"}]).content[0].text
    assert text == OPENAI_REPLY
    sent = openai_upstream.last()["body"]
    assert sent["max_completion_tokens"] == 1024 and "max_tokens" not in sent


def test_anthropic_sdk_stream_over_openai_backend(ant):
    with ant.messages.stream(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == OPENAI_REPLY and final.stop_reason == "end_turn" and final.usage.output_tokens == 9


def test_anthropic_sdk_tools_over_openai_backend(ant):
    # (The OpenAI fake streams no tool calls; the streamed tool path is covered in
    # test_translate_anthropic_openai.py and over the Bedrock fake.)
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}]
    m = ant.messages.create(model="gpt-4o-mini", max_tokens=50, tools=tools,
                            messages=[{"role": "user", "content": "Weather in Paris?"}])
    use = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and use[0].name == "get_weather" and use[0].input == {"city": "Paris"}


FILE_IMAGE = {"type": "image", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_image_by_file_id_is_a_400_naming_the_block(ant, openai_upstream, stream):
    # A Files API file_id is Anthropic's storage: an OpenAI backend cannot read it, and a
    # made-up data: URL would only fail there, with a message that names nothing the client sent.
    sent_before = len(openai_upstream.requests)
    with pytest.raises(anthropic.BadRequestError) as bad:
        ant.messages.create(model="gpt-4o-mini", max_tokens=50, stream=stream, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, FILE_IMAGE]}])
    error = bad.value.body["error"]
    assert error["type"] == "invalid_request_error" and "messages[0].content[1]" in error["message"]
    assert "file" in error["message"] and len(openai_upstream.requests) == sent_before


def test_anthropic_sdk_image_by_url_reaches_the_openai_backend(ant, openai_upstream):
    ant.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": [URL_IMAGE]}])
    sent = openai_upstream.last("/chat/completions")["body"]["messages"]
    assert sent == [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]


PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_tool_result_error_and_images_reach_the_openai_backend(ant, openai_upstream, stream):
    # OpenAI's tool message takes text only and has no error flag: the failure is said in its
    # text, and the result's images follow in a user message that names the call they came from.
    tools = [{"name": "screenshot", "input_schema": {"type": "object"}}]
    messages = [
        {"role": "user", "content": "Take two screenshots."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_a", "name": "screenshot", "input": {}},
                                          {"type": "tool_use", "id": "toolu_b", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "is_error": True, "content": "display not found"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": [
                {"type": "text", "text": "saved"}, {"type": "image", "source": PNG}]},
            {"type": "text", "text": "Describe them."}]},
    ]
    if stream:
        with ant.messages.stream(model="gpt-4o-mini", max_tokens=50, tools=tools, messages=messages) as s:
            s.get_final_message()
    else:
        ant.messages.create(model="gpt-4o-mini", max_tokens=50, tools=tools, messages=messages)
    sent = openai_upstream.last("/chat/completions")["body"]["messages"][2:]
    assert sent == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "Error: display not found"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "saved"},
        {"role": "user", "content": [
            {"type": "text", "text": "The result of tool call toolu_b holds these images:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "Describe them."}]},
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_stop_sequence_named_when_the_backend_says_which(ant, stream):
    # vLLM names the stop string it matched (`stop_reason`); OpenAI says only "stop", for a
    # stop sequence as for the model's own end, so it stays end_turn (the next test).
    args = {"model": "llama", "max_tokens": 50, "stop_sequences": ["zzz", "from"],
            "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        with ant.messages.stream(**args) as s:
            m = s.get_final_message()
    else:
        m = ant.messages.create(**args)
    assert m.content[0].text.strip() == VLLM_REPLY.split(" from")[0]
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "from")


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_natural_end_is_end_turn_even_with_stop_sequences(ant, stream):
    args = {"model": "llama", "max_tokens": 50, "stop_sequences": ["zzz"], "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        with ant.messages.stream(**args) as s:
            m = s.get_final_message()
    else:
        m = ant.messages.create(**args)
    assert m.content[0].text.strip() == VLLM_REPLY and (m.stop_reason, m.stop_sequence) == ("end_turn", None)


def test_anthropic_sdk_native_pass_through(ant, anthropic_upstream, gw):
    m = ant.messages.create(model="claude-sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == fa.REPLY and m.usage.cache_read_input_tokens == 8
    sent = anthropic_upstream.last()
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET and sent["body"]["model"] == "claude-sonnet-4-5"
    with ant.messages.stream(model="claude-sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == fa.REPLY
    line = [r for r in gw.log_lines() if r.get("api") == "messages"][-1]
    assert line["prompt_tokens"] == 33 and line["completion_tokens"] == fa.OUTPUT_TOKENS


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_native_answer_without_usage_is_counted_from_its_text(ant, gw, stream):
    raw = ant.messages.with_raw_response.create(model="no-usage", max_tokens=10, stream=stream,
                                                messages=[{"role": "user", "content": "hi"}])
    answer = raw.parse()
    if stream:
        text = "".join(e.delta.text for e in answer if e.type == "content_block_delta" and e.delta.type == "text_delta")
    else:
        text = answer.content[0].text
    line = gw.log_line(raw.headers["x-request-id"])
    assert text == fa.REPLY and line["completion_tokens"] == REPLY_TOKENS and line["prompt_tokens"] >= 1


def test_anthropic_sdk_errors_are_anthropic_shaped(gw):
    bad = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key="not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        bad.messages.create(model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert auth.value.body["type"] == "error" and auth.value.body["error"]["type"] == "authentication_error"
    good = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        good.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError):
        good.messages.create(model="rate-limited", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_anthropic_sdk_count_tokens(ant):
    native = ant.messages.count_tokens(model="claude-sonnet", messages=[{"role": "user", "content": "hi"}])
    assert native.input_tokens == 42  # answered by the Anthropic upstream
    local = ant.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}])
    assert 4 <= local.input_tokens < 40  # counted by the gateway


def test_anthropic_sdk_count_tokens_counts_an_image_as_an_image_not_its_base64(ant):
    # An image costs a model some hundreds of tokens, about 1,600 at most (Anthropic scales larger
    # ones down); its base64 is no text, and counted as text 150 KB of it was some 100,000 tokens.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" * 15_000}}
    text = {"type": "text", "text": "What is in this picture?"}
    alone = ant.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": [text]}]).input_tokens
    with_image = ant.messages.count_tokens(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": [image, text]}]).input_tokens
    assert alone < with_image <= alone + 1_600


def test_bearer_auth_also_accepted_on_anthropic_path(gw):
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", auth_token=TEST_KEY, api_key=None, max_retries=0)
    m = client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert m.content[0].text == OPENAI_REPLY

"""End to end through a real gateway against the fake Bedrock runtime: the official openai SDK
(stream, non-stream, tools, errors) with real SigV4 signing checked by the fake, a Bedrock API
key, and the anthropic SDK's streamed tool use over Bedrock."""
from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fakes import bedrock_upstream as fb
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.harness import TEST_KEY, GatewayProcess, key_hash

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@pytest.fixture(scope="module")
def gw(bedrock: FakeBedrock) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - name: aws
    schema: bedrock
    region: {fb.REGION}
    base_url: {bedrock.url}
    credentials: {{access_key_id: {fb.ACCESS_KEY}, secret_access_key: "{fb.SECRET_KEY}"}}
  - name: aws-wrong
    schema: bedrock
    region: {fb.REGION}
    base_url: {bedrock.url}
    credentials: {{access_key_id: {fb.ACCESS_KEY}, secret_access_key: not-the-secret}}
  - name: aws-key
    schema: bedrock
    region: {fb.REGION}
    base_url: {bedrock.url}
    api_key: {fb.API_KEY}
models:
  - name: claude-bedrock
    targets: [{{provider: aws, model: "{MODEL_ID}"}}]
  - name: wrong-secret
    targets: [{{provider: aws-wrong, model: "{MODEL_ID}"}}]
  - name: with-api-key
    targets: [{{provider: aws-key, model: "{MODEL_ID}"}}]
  - name: throttled
    targets: [{{provider: aws}}]
  - name: stream-throttled
    targets: [{{provider: aws}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    yield process
    process.stop()


def test_non_stream_signed_with_sigv4(oai, bedrock):
    r = oai.chat.completions.create(model="claude-bedrock", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == fb.REPLY and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 37 and r.usage.completion_tokens == 12
    sent = bedrock.last()
    assert sent["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert fb.SECRET_KEY not in json.dumps(sent)
    assert sent["body"]["inferenceConfig"] == {"maxTokens": 20}


def test_stream(oai):
    chunks = list(oai.chat.completions.create(model="claude-bedrock", stream=True, stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fb.REPLY
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_tools(oai, stream):
    args = dict(model="claude-bedrock", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER])
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **args))
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        name, finish = calls[0].function.name, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        r = oai.chat.completions.create(**args)
        call = r.choices[0].message.tool_calls[0]
        name, arguments, finish = call.function.name, call.function.arguments, [r.choices[0].finish_reason]
    assert name == "get_weather" and json.loads(arguments) == fb.TOOL_INPUT and finish == ["tool_calls"]


def test_api_key_as_bearer(oai, bedrock):
    r = oai.chat.completions.create(model="with-api-key", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == fb.REPLY
    assert bedrock.last()["headers"]["authorization"] == f"Bearer {fb.API_KEY}"


def test_errors(oai):
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="throttled", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIStatusError) as bad_sig:
        oai.chat.completions.create(model="wrong-secret", messages=[{"role": "user", "content": "x"}])
    assert bad_sig.value.status_code == 502 and "not-the-secret" not in bad_sig.value.response.text
    with pytest.raises(openai.APIError):
        list(oai.chat.completions.create(model="stream-throttled", stream=True, messages=[{"role": "user", "content": "x"}]))


def test_anthropic_sdk_streamed_tool_use_over_bedrock(gw):
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0)
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    with client.messages.stream(model="claude-bedrock", max_tokens=50, tools=tools,
                                messages=[{"role": "user", "content": "weather?"}]) as s:
        m = s.get_final_message()
    assert m.content[0].text == fb.REPLY and m.stop_reason == "tool_use"
    assert m.content[1].name == "get_weather" and m.content[1].input == fb.TOOL_INPUT
    assert m.usage.output_tokens == 12 and m.usage.cache_read_input_tokens == 5

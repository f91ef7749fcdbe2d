"""End to end through a real gateway against the fake Bedrock runtime: the official openai SDK
(stream, non-stream, tools, errors) with real SigV4 signing checked by the fake, a Bedrock API
key, and the anthropic SDK's streamed tool use over Bedrock."""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
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
  - name: thinks-then-stalls
    targets: [{{provider: aws}}]
  - name: model-error
    targets: [{{provider: aws}}]
  - name: model-error-then-ok
    targets: [{{provider: aws, model: model-error, priority: 0}}, {{provider: aws, model: "{MODEL_ID}", priority: 1}}]
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


AGENT_LOOP = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    {"role": "tool", "tool_call_id": "c2", "content": "21C"},
    {"role": "user", "content": "Summarise the weather in one line."},
]


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_history_without_tools_is_answered(oai, bedrock, stream):
    # A summary turn after an agent loop sends the loop's tool calls and results but no tools:
    # OpenAI answers it; Converse refuses toolUse/toolResult blocks without a toolConfig (a 400
    # ValidationException, as the fake answers), so they go as text and the model can call none.
    r = oai.chat.completions.create(model="claude-bedrock", messages=AGENT_LOOP, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
    assert text == fb.REPLY
    sent = bedrock.last()["body"]
    assert "toolConfig" not in sent
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [{"text": 'Tool call c1: get_weather({"city":"Paris"})'},
                                          {"text": 'Tool call c2: get_weather({"city":"Rome"})'}]},
        {"role": "user", "content": [{"text": "Tool result for c1 (get_weather): 18C"},
                                     {"text": "Tool result for c2 (get_weather): 21C"},
                                     {"text": "Summarise the weather in one line."}]}]


def test_the_fake_refuses_tool_blocks_without_a_tool_config(bedrock):
    # The e2e test above proves the fix only if the fake refuses what AWS refuses.
    body = {"messages": [{"role": "assistant", "content": [{"toolUse": {"toolUseId": "c1", "name": "f", "input": {}}}]}]}
    request = urllib.request.Request(f"{bedrock.url}/model/m/converse", data=json.dumps(body).encode(), method="POST",
                                     headers={"authorization": f"Bearer {fb.API_KEY}", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and refused.value.headers["x-amzn-ErrorType"].startswith("ValidationException:")
    assert json.loads(refused.value.read()) == {
        "message": "The toolConfig field must be defined when using toolUse and toolResult content blocks."}


def test_blank_text_is_left_out(oai, bedrock):
    # OpenAI takes empty text ({"role": "system", "content": ""} is common); Converse refuses a
    # blank text block with a ValidationException, as the fake does.
    r = oai.chat.completions.create(model="claude-bedrock", messages=[
        {"role": "system", "content": ""}, {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": " "}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": ""}, {"role": "user", "content": [{"type": "text", "text": ""}]}])
    assert r.choices[0].message.content == fb.REPLY
    sent = bedrock.last()["body"]
    assert sent["system"] == [{"text": "Be brief."}]
    assert sent["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]

@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_with_an_empty_description_is_sent_without_one(oai, bedrock, stream):
    # OpenAI takes `"description": ""` (frameworks send it for tools without one); Converse's
    # toolSpec.description has a minimum length of 1: a ValidationException, as the fake answers.
    tool = {"type": "function", "function": {**WEATHER["function"], "description": ""}}
    r = oai.chat.completions.create(model="claude-bedrock", messages=[{"role": "user", "content": "weather?"}],
                                    tools=[tool], stream=stream)
    if stream:
        r = list(r)
    assert "description" not in bedrock.last()["body"]["toolConfig"]["tools"][0]["toolSpec"]


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


# fb.THOUGHT is 10 tokens in o200k_base, the tool call's arguments ('{"city": "Paris"}') 6.
THOUGHT_AND_CALL_TOKENS = 16


def test_a_stream_the_client_leaves_is_charged_its_reasoning_and_tool_call(oai, gw):
    # Left before Bedrock's closing usage, a stream is charged what it streamed, counted by the
    # gateway: reasoning and a tool call's arguments are output tokens as much as text is.
    raw = oai.chat.completions.with_raw_response.create(model="thinks-then-stalls", stream=True, tools=[WEATHER],
                                                        messages=[{"role": "user", "content": "weather?"}])
    stream = raw.parse()
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.tool_calls and chunk.choices[0].delta.tool_calls[0].function.arguments:
            break  # the whole call came: the client leaves
    stream.close()
    line = gw.log_line(raw.headers["x-request-id"])
    assert line["error"] == "client_closed" and line["completion_tokens"] == THOUGHT_AND_CALL_TOKENS, line


def test_a_model_error_is_the_upstreams_fault_and_falls_back(oai, bedrock):
    # ModelErrorException (HTTP 424) is the model failing while processing, not a bad request:
    # a retryable 502 (as its stream twin modelStreamErrorException is), so the next target serves.
    with pytest.raises(openai.APIStatusError) as failed:
        oai.chat.completions.create(model="model-error", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502 and failed.value.type == "api_error"
    r = oai.chat.completions.create(model="model-error-then-ok", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == fb.REPLY
    assert [req["model"] for req in bedrock.requests[-2:]] == ["model-error", MODEL_ID]


def test_anthropic_sdk_streamed_tool_use_over_bedrock(gw):
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0)
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    with client.messages.stream(model="claude-bedrock", max_tokens=50, tools=tools,
                                messages=[{"role": "user", "content": "weather?"}]) as s:
        m = s.get_final_message()
    assert m.content[0].text == fb.REPLY and m.stop_reason == "tool_use"
    assert m.content[1].name == "get_weather" and m.content[1].input == fb.TOOL_INPUT
    assert m.usage.output_tokens == 12 and m.usage.cache_read_input_tokens == 5


def test_anthropic_sdk_stream_over_bedrock_reports_the_usage_its_non_stream_answer_does(gw):
    # Cache writes have no field in the OpenAI chunk between the two translators: the stream's
    # closing usage must still tell them apart from fresh input, as the non-stream answer does.
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0)
    args = dict(model="claude-bedrock", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    whole = client.messages.create(**args).usage
    with client.messages.stream(**args) as s:
        streamed = s.get_final_message().usage

    def counts(u: anthropic.types.Usage) -> tuple[int | None, ...]:
        return u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens

    assert counts(whole) == (30, 12, 5, 2)  # fb.USAGE
    assert counts(streamed) == counts(whole)


# -- an AWS credential chain that fails: a profile the AWS config lacks, a credential_process
# that exits non-zero. Each is the provider's retryable 502 (so a route falls back), never a
# 500, and never botocore's message: a credential process's stderr can hold secrets.

PROCESS_STDERR_SECRET = "AKIAPROCESSSTDERR777"


@pytest.fixture(scope="module")
def broken_chain(bedrock: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    aws = tmp_path_factory.mktemp("aws")
    (aws / "config").write_text(
        f"[profile broken]\ncredential_process = sh -c 'echo {PROCESS_STDERR_SECRET} >&2; exit 1'\n")
    env = {"AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": ""}
    process = GatewayProcess(f"""
providers:
  - {{name: aws-missing, schema: bedrock, region: {fb.REGION}, base_url: {bedrock.url}, credentials: {{profile: nosuchprofile}}}}
  - {{name: aws-broken, schema: bedrock, region: {fb.REGION}, base_url: {bedrock.url}, credentials: {{profile: broken}}}}
  - name: aws
    schema: bedrock
    region: {fb.REGION}
    base_url: {bedrock.url}
    credentials: {{access_key_id: {fb.ACCESS_KEY}, secret_access_key: "{fb.SECRET_KEY}"}}
models:
  - {{name: missing-profile, targets: [{{provider: aws-missing, model: "{MODEL_ID}"}}]}}
  - {{name: failing-process, targets: [{{provider: aws-broken, model: "{MODEL_ID}"}}]}}
  - name: failing-then-good
    targets: [{{provider: aws-broken, model: "{MODEL_ID}", priority: 0}}, {{provider: aws, model: "{MODEL_ID}", priority: 1}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""", env=env)
    yield process
    process.stop()


@pytest.mark.parametrize("model, provider", [("missing-profile", "aws-missing"), ("failing-process", "aws-broken")])
def test_a_failing_credential_chain_is_a_502_naming_the_provider(broken_chain: GatewayProcess, model: str,
                                                                 provider: str) -> None:
    client = openai.OpenAI(base_url=broken_chain.url + "/v1", api_key=TEST_KEY, max_retries=0)
    for _ in range(2):  # and again: the chain is read afresh, not a failure remembered as a 500
        with pytest.raises(openai.APIStatusError) as bad:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert bad.value.status_code == 502 and bad.value.code == "upstream_auth_failed"
        text = bad.value.response.text
        assert f"'{provider}'" in text and PROCESS_STDERR_SECRET not in text and "nosuchprofile" not in text


def test_a_route_falls_back_past_a_failing_credential_chain(broken_chain: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=broken_chain.url + "/v1", api_key=TEST_KEY, max_retries=0)
    r = client.chat.completions.create(model="failing-then-good", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == fb.REPLY


def test_a_failing_credential_chain_is_logged_once_per_incident_without_its_secrets(broken_chain: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=broken_chain.url + "/v1", api_key=TEST_KEY, max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="failing-process", messages=[{"role": "user", "content": "hi"}])
    logged = broken_chain.stderr()
    assert "Traceback" not in logged and PROCESS_STDERR_SECRET not in logged
    said = [line for line in logged.splitlines() if "aws-broken" in line and "credentials" in line]
    assert len(said) == 1, said  # the first failure says it; the ones after it are the same incident
    assert "CredentialRetrievalError" in said[0]


# -- a chain that yields temporary keys once, then fails every refresh: botocore retries the
# refresh on each request and logs its failure with a traceback quoting the process's stderr.
# Keys 12 minutes from expiry are in botocore's advisory window (it keeps using them), keys 7
# minutes from expiry in its mandatory one (the request cannot be signed).

ONCE_THEN_FAIL = """\
import datetime, json, os, sys
state = sys.argv[1]
if os.path.exists(state):
    print("refresh failed for {secret}", file=sys.stderr)
    sys.exit(1)
open(state, "w").close()
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=int(sys.argv[2]))
print(json.dumps({{"Version": 1, "AccessKeyId": "{access}", "SecretAccessKey": "{secret_key}", "SessionToken": "t",
                  "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


@pytest.fixture(scope="module")
def failing_refresh(bedrock: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    aws = tmp_path_factory.mktemp("aws-refresh")
    script = aws / "once_then_fail.py"
    script.write_text(ONCE_THEN_FAIL.format(secret=PROCESS_STDERR_SECRET, access=fb.ACCESS_KEY, secret_key=fb.SECRET_KEY))
    profiles = "".join(f"[profile {name}]\ncredential_process = {sys.executable} {script} {aws / name} {minutes}\n"
                       for name, minutes in (("advisory", 12), ("mandatory", 7)))
    (aws / "config").write_text(profiles)
    env = {"AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": ""}
    process = GatewayProcess(f"""
providers:
  - {{name: aws-advisory, schema: bedrock, region: {fb.REGION}, base_url: {bedrock.url}, credentials: {{profile: advisory}}}}
  - {{name: aws-mandatory, schema: bedrock, region: {fb.REGION}, base_url: {bedrock.url}, credentials: {{profile: mandatory}}}}
models:
  - {{name: advisory, targets: [{{provider: aws-advisory, model: "{MODEL_ID}"}}]}}
  - {{name: mandatory, targets: [{{provider: aws-mandatory, model: "{MODEL_ID}"}}]}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""", env=env)
    yield process
    process.stop()


@pytest.mark.parametrize("model, works", [("advisory", True), ("mandatory", False)])
def test_a_failing_refresh_is_logged_once_per_incident_without_botocores_traceback(
        failing_refresh: GatewayProcess, model: str, works: bool) -> None:
    client = openai.OpenAI(base_url=failing_refresh.url + "/v1", api_key=TEST_KEY, max_retries=0)
    for _ in range(3):
        if works:  # the keys still valid sign the request
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content == fb.REPLY
        else:
            with pytest.raises(openai.APIStatusError) as bad:
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert bad.value.status_code == 502 and bad.value.code == "upstream_auth_failed"
    logged = failing_refresh.stderr()
    assert "Traceback" not in logged and PROCESS_STDERR_SECRET not in logged and "botocore" not in logged
    said = [line for line in logged.splitlines() if f"aws-{model}" in line and "credentials" in line]
    assert len(said) == 1, said

"""The official openai SDK, sync and async, against a real gateway and a fake OpenAI upstream."""
from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fakes.openai_upstream import CODE, MCP_ARGUMENTS, REFUSAL, REPLY, RESPONSE_USAGE_CUT, THOUGHT, TOOL_INPUT
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess
from tollway.core.accounting.tokens import count_tokens


@pytest.fixture()
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)


@pytest.fixture()
def aclient(gateway: GatewayProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)


def test_chat_non_stream(client, openai_upstream):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == REPLY
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 9
    sent = openai_upstream.last("/chat/completions")
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"  # the gateway's credential, not the client's
    assert TEST_KEY not in str(sent["headers"])


def test_chat_stream_relays_chunks_and_hides_injected_usage(client, openai_upstream):
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    # The gateway asked the upstream for usage, but the client did not: it sees no usage chunk.
    assert openai_upstream.last("/chat/completions")["body"]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)


def test_chat_stream_with_usage_when_client_asks(client):
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "one two three"}])
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12


async def test_async_chat_stream_and_non_stream(aclient):
    r = await aclient.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == REPLY
    stream = await aclient.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                   messages=[{"role": "user", "content": "x"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == REPLY


def test_model_override_renames_upstream_model(client, openai_upstream):
    client.chat.completions.create(model="llama-3-8b", messages=[{"role": "user", "content": "x"}])
    assert openai_upstream.last("/chat/completions")["body"]["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_tools_and_unknown_fields_pass_through(client, openai_upstream):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=tools, tool_choice="auto",
        response_format={"type": "json_object"}, n=1, logprobs=True, top_logprobs=2,
        extra_body={"vendor_extension": {"nested": [1, 2, 3]}},
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    sent = openai_upstream.last("/chat/completions")["body"]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    assert sent["response_format"] == {"type": "json_object"} and sent["top_logprobs"] == 2
    assert sent["vendor_extension"] == {"nested": [1, 2, 3]}


def test_n_choices(client):
    r = client.chat.completions.create(model="gpt-4o-mini", n=3, messages=[{"role": "user", "content": "x"}])
    assert [c.index for c in r.choices] == [0, 1, 2]


def test_completions(client):
    r = client.completions.create(model="gpt-4o-mini", prompt="Say something")
    assert r.choices[0].text.strip() == REPLY


def test_embeddings(client, openai_upstream):
    r = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in r.data] == [0, 1] and r.data[1].embedding[0] == pytest.approx(0.2)
    assert openai_upstream.last("/embeddings")["body"]["input"] == ["a", "b"]


def test_models_lists_only_what_the_key_may_use(client, gateway):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "llama-3-8b", "demo"} <= ids
    from tests.harness import OTHER_KEY
    narrow = openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    assert [m.id for m in narrow.models.list()] == ["gpt-4o-mini"]


def test_responses_api_stream_and_non_stream(client):
    r = client.responses.create(model="gpt-4o-mini", input="hello")
    assert r.output_text == REPLY
    events = list(client.responses.create(model="gpt-4o-mini", input="hello", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == 9


def _responses_stream(client: openai.OpenAI, gateway: GatewayProcess, model: str) -> tuple[list[Any], dict[str, Any]]:
    """The events a Responses stream gave the SDK, and the access-log line it left."""
    raw = client.responses.with_raw_response.create(model=model, input="hello", stream=True)
    events = list(raw.parse())
    return events, gateway.log_line(raw.headers["x-request-id"])


CUT = (RESPONSE_USAGE_CUT["input_tokens"], RESPONSE_USAGE_CUT["output_tokens"])


@pytest.mark.parametrize("model, end, usage", [("gpt-4o-mini", "response.completed", (5, 9)),
                                               ("incomplete", "response.incomplete", CUT),
                                               ("failed", "response.failed", CUT)])
def test_responses_stream_is_billed_what_its_closing_event_reports(client, gateway, model, end, usage):
    # An answer cut at max_output_tokens, or one that failed midway, still used its tokens.
    events, line = _responses_stream(client, gateway, model)
    reported = events[-1].response.usage
    assert events[-1].type == end and (reported.input_tokens, reported.output_tokens) == usage
    assert (line["prompt_tokens"], line["completion_tokens"]) == usage


def test_responses_stream_without_usage_is_counted_from_its_text(client, gateway):
    events, line = _responses_stream(client, gateway, "no-usage")
    assert events[-1].type == "response.completed" and events[-1].response.usage is None
    # "The quick brown fox jumps over the lazy dog" is 9 tokens in o200k_base.
    assert line["completion_tokens"] == 9 and line["prompt_tokens"] >= 1


def test_responses_stream_cut_before_its_end_says_so_and_is_counted_from_its_text(client, gateway):
    # The upstream sent the text, then ended the stream cleanly without any closing event: the
    # client gets an error event, not a stream that merely stops (as on every other relay).
    events, line = _responses_stream(client, gateway, "ends-early")
    assert [e.type for e in events] == ["response.created", "response.output_text.delta", "error"]
    assert events[-1].code == "upstream_disconnected" and events[-1].sequence_number == 2
    assert line["error"] == "upstream_disconnected" and line["completion_tokens"] == 9


def _answer_tokens(client: openai.OpenAI, gateway: GatewayProcess, api: str, stream: bool) -> int:
    """The output tokens the gateway billed a thinks-no-usage answer, whole or streamed."""
    if api == "chat":
        raw = client.chat.completions.with_raw_response.create(model="thinks-no-usage", stream=stream,
                                                               messages=[{"role": "user", "content": "x"}])
        refusal = ("".join(c.choices[0].delta.refusal or "" for c in raw.parse() if c.choices) if stream
                   else raw.parse().choices[0].message.refusal)
        assert refusal == REFUSAL
    else:
        raw = client.responses.with_raw_response.create(model="thinks-no-usage", input="x", stream=stream)
        kinds = [e.type for e in raw.parse()][1:-1] if stream else [item.type for item in raw.parse().output]
        # reasoning, refusal, custom tool call, MCP call, code interpreter call (and a stream's audio delta)
        assert len(kinds) == 5 + stream, kinds
    return gateway.log_line(raw.headers["x-request-id"])["completion_tokens"]


@pytest.mark.parametrize("api, text", [("chat", THOUGHT + REFUSAL),
                                       ("responses", THOUGHT + REFUSAL + TOOL_INPUT + MCP_ARGUMENTS + CODE)],
                         ids=["chat", "responses"])
def test_an_answer_without_usage_is_billed_its_reasoning_refusal_and_tool_input(client, gateway, api, text):
    # No usage: the gateway counts the answer's text, which is not only `content` / output_text,
    # and the same answer costs the same whether it came whole or streamed (an MCP call's
    # arguments and the code interpreter's code too; a stream's base64 audio is no text).
    expected = count_tokens(text, "thinks-no-usage")
    assert _answer_tokens(client, gateway, api, stream=False) == expected > 20
    assert _answer_tokens(client, gateway, api, stream=True) == expected


def test_azure_openai_deployment_url_and_api_key(client, openai_upstream):
    r = client.chat.completions.create(model="azure-gpt", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == REPLY
    sent = openai_upstream.requests[-1]
    assert sent["path"] == "/openai/deployments/my-deployment/chat/completions"
    assert sent["headers"]["api-key"] == UPSTREAM_SECRET and "authorization" not in sent["headers"]


def test_builtin_fake_provider_stream(client):
    stream = client.chat.completions.create(model="demo", stream=True, messages=[{"role": "user", "content": "ping"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from Tollway's fake provider. You said: ping"


@pytest.mark.parametrize("body", [{"messages": 5}, {"messages": [{"role": "user", "content": "hi"}], "tools": [None]},
                                  {"messages": [{"role": "user", "content": "hi"}], "tools": ["search"]}])
def test_builtin_fake_provider_answers_a_body_it_cannot_read_with_400(client, body):
    # The gateway forwards such fields for the upstream to judge; the fake judges as one would.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", **body)
    assert e.value.status_code == 400 and "fake provider cannot read" in e.value.message


def test_builtin_fake_provider_takes_a_null_stream(client):
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "ping"}],
                                       extra_body={"stream": None})
    assert r.choices[0].message.content.endswith("You said: ping")


def test_request_id_echoed_or_generated(gateway, client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "my-trace-42"})
    assert raw.headers["x-request-id"] == "my-trace-42"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "bad id\twith junk"})
    assert raw.headers["x-request-id"].startswith("req_")

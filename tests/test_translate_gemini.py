"""OpenAI chat <-> Gemini generateContent (Vertex AI and the Gemini API): URLs, request and
response tables, and the SSE stream split at every boundary."""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import streams
from tests.fakes import gemini_upstream as fg
from tests.streams import summarize
from tollway.core.config import Provider
from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext
from tollway.core.providers.chat.gemini import OpenAIToGemini, OpenAIToVertex
from tollway.core.request import parse_head

GEMINI = Provider(name="g", schema="gemini", base_url="https://generativelanguage.googleapis.com/v1beta", api_key="AIza-secret")
VERTEX = Provider(name="v", schema="vertex", project="my-proj", location="europe-west4")
ADAPTER = OpenAIToGemini()
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "additionalProperties": False}}}
USER = {"role": "user", "content": "hi"}


def ctx(body: dict[str, Any], provider: Provider = GEMINI) -> CallContext:
    raw = json.dumps({"model": "m", **body}).encode()
    return CallContext("chat", raw, parse_head(raw), "gemini-2.5-flash", provider, 1_700_000_000.0)


def test_urls_and_credentials():
    g = ADAPTER.build(ctx({"messages": [USER], "stream": True}))
    assert g.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert ("x-goog-api-key", "AIza-secret") in g.headers and "secret" not in g.url
    v = OpenAIToVertex().build(ctx({"messages": [USER]}, VERTEX))
    assert v.url == ("https://europe-west4-aiplatform.googleapis.com/v1/projects/my-proj/locations/europe-west4"
                     "/publishers/google/models/gemini-2.5-flash:generateContent")
    assert not any(k in ("authorization", "x-goog-api-key") for k, _ in v.headers)  # OAuth is added by the signer
    glob = OpenAIToVertex().build(ctx({"messages": [USER]}, Provider(name="v", schema="vertex", project="p", location="global")))
    assert glob.url.startswith("https://aiplatform.googleapis.com/v1/projects/p/locations/global/")


REQUESTS = [
    ("system, merged user turns", {"messages": [{"role": "system", "content": "sys"}, USER, {"role": "user", "content": "more"}]},
     {"systemInstruction": {"parts": [{"text": "sys"}]}, "contents": [{"parts": [{"text": "hi"}, {"text": "more"}], "role": "user"}]}),
    ("generation config", {"messages": [USER], "max_completion_tokens": 5, "temperature": 0, "stop": "Z", "seed": 3},
     {"generationConfig": {"maxOutputTokens": 5, "temperature": 0.0, "stopSequences": ["Z"], "seed": 3}}),
    ("json schema", {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
     {"generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}}),
    ("tools keep JSON schema", {"messages": [USER], "tools": [TOOL], "tool_choice": "required"},
     {"tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object", "additionalProperties": False}}]}],
      "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
    ("named tool", {"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}}),
    ("tool round trip finds the function name", {"messages": [
        USER, {"role": "assistant", "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c9", "content": '{"temp": 3}'}, {"role": "tool", "tool_call_id": "c9", "content": "plain"}]},
     {"contents": [{"parts": [{"text": "hi"}], "role": "user"},
                   {"parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "c9"}}], "role": "model"},
                   {"parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 3}, "id": "c9"}},
                              {"functionResponse": {"name": "get_weather", "response": {"content": "plain"}, "id": "c9"}}],
                    "role": "user"}]}),
    ("empty text left out", {"messages": [{"role": "system", "content": ""}, {"role": "developer", "content": "dev"},
                                          {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]}]},
     {"systemInstruction": {"parts": [{"text": "dev"}]}, "contents": [{"parts": [{"text": "hi"}], "role": "user"}]}),
    ("images", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}}]}]},
     {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                              {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}}], "role": "user"}]}),
]


@pytest.mark.parametrize("name,body,expected", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name, body, expected):
    out = json.loads(ADAPTER.build(ctx(body)).body)
    assert {k: out.get(k) for k in expected} == expected


def tool_turn(call_id: str, name: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": name + " result"}]


def sent_calls_and_results(messages: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    contents = json.loads(ADAPTER.build(ctx({"messages": messages})).body)["contents"]
    return [(key, part[key]["name"], part[key].get("id")) for c in contents for part in c["parts"]
            for key in ("functionCall", "functionResponse") if key in part]


def test_a_reused_id_finds_the_call_just_before_its_result():
    """Older gateways numbered every answer's calls from call_0: a result belongs to the latest
    call with its id before it, not to the last one anywhere in the conversation."""
    messages = [USER, *tool_turn("call_0", "get_weather"), USER, *tool_turn("call_0", "get_time")]
    assert sent_calls_and_results(messages) == [("functionCall", "get_weather", None), ("functionResponse", "get_weather", None),
                                                ("functionCall", "get_time", None), ("functionResponse", "get_time", None)]


def test_an_id_gemini_sent_goes_back_with_the_call_and_its_result():
    body = fg.whole_body("gemini-x", True)
    body["candidates"][0]["content"]["parts"][-1]["functionCall"]["id"] = "gem-7f3a"
    message = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])["choices"][0]["message"]
    call_id = message["tool_calls"][0]["id"]
    assert call_id == "gem-7f3a"
    made = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(fg.whole_body("gemini-x", True)).encode())[0])
    made_id = made["choices"][0]["message"]["tool_calls"][0]["id"]
    assert sent_calls_and_results([USER, *tool_turn(call_id, "get_weather"), USER, *tool_turn(made_id, "get_time")]) == [
        ("functionCall", "get_weather", "gem-7f3a"), ("functionResponse", "get_weather", "gem-7f3a"),
        ("functionCall", "get_time", None), ("functionResponse", "get_time", None)]  # the gateway's own ids stay home


def test_ids_made_for_gemini_calls_differ_between_answers():
    """Gemini sends no call ids: the gateway's differ from one answer (and request) to the next,
    and between the calls of one answer, so a client's tool loop never sees one id twice."""
    body = fg.whole_body("gemini-x", True)
    body["candidates"][0]["content"]["parts"].append({"functionCall": {"name": "get_time", "args": {}}})

    def ids(messages: list[dict[str, Any]], response_id: str) -> list[str]:
        out = ADAPTER.response(ctx({"messages": messages}), 200, json.dumps({**body, "responseId": response_id}).encode())[0]
        return [c["id"] for c in json.loads(out)["choices"][0]["message"]["tool_calls"]]

    first = ids([USER], "r1")
    assert len(set(first)) == 2 and first == ids([USER], "r1")  # deterministic for one answer
    later = [ids([USER, *tool_turn(first[0], "get_weather")], "r1"), ids([USER], "r2")]
    assert all(not set(first) & set(other) for other in later)


@pytest.mark.parametrize("body,param", [
    ({"n": 2}, "n"),
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "tool", "tool_call_id": "c1", "content": "x"}, *tool_turn("c1", "f")[:1]]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/noext"}}]}]}, "messages[0].content[0]"),
])
def test_untranslatable_is_400(body, param):
    with pytest.raises(GatewayError) as err:
        ADAPTER.build(ctx({"messages": [USER], **body}))
    assert err.value.status == 400 and err.value.param == param


@pytest.mark.parametrize("with_tool,finish", [(False, "stop"), (True, "tool_calls")])
def test_response_translation(with_tool, finish):
    out, usage = ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(fg.whole_body("gemini-x", with_tool)).encode())
    doc = json.loads(out)
    msg = doc["choices"][0]["message"]
    assert doc["choices"][0]["finish_reason"] == finish  # Gemini said STOP
    assert msg["content"] == fg.REPLY and msg["reasoning_content"] == "thinking..."
    assert [json.loads(c["function"]["arguments"]) for c in msg.get("tool_calls") or []] == ([fg.TOOL_ARGS] if with_tool else [])
    assert doc["usage"] == {"prompt_tokens": 40, "completion_tokens": 16, "total_tokens": 56,
                            "prompt_tokens_details": {"cached_tokens": 16}, "completion_tokens_details": {"reasoning_tokens": 6}}
    assert usage.reasoning_tokens == 6


def test_max_tokens_and_safety():
    body = fg.whole_body("g", False)
    body["candidates"][0]["finishReason"] = "MAX_TOKENS"
    assert json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])["choices"][0]["finish_reason"] == "length"
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    assert json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(blocked).encode())[0])["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("status,body,client_status", [
    (429, {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}, 429),
    (400, {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}, 400),
    (400, {"error": {"code": 400, "message": "API key not valid", "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}, 502),
    (403, {"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}, 502),
    (503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}, 503),
])
def test_error_mapping(status, body, client_status):
    assert ADAPTER.error(ctx({"messages": [USER]}), status, [], json.dumps(body).encode()).status == client_status


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                                    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"])
def test_every_safety_stop_is_content_filter_streamed_or_not(reason):
    """Gemini's FinishReason has safety and recitation stops for images beside those for text
    (IMAGE_SAFETY, IMAGE_PROHIBITED_CONTENT, IMAGE_RECITATION): each is `content_filter`."""
    body = fg.whole_body("gemini-x", False)
    body["candidates"][0]["finishReason"] = reason
    whole = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])
    frags = fg.fragments("gemini-x", False)
    frags[-1]["candidates"][0]["finishReason"] = reason
    chunks, _ = client_view(b"".join(b"data: " + json.dumps(f).encode() + b"\r\n\r\n" for f in frags), [])
    assert (whole["choices"][0]["finish_reason"], summarize(chunks)["finishes"]) == ("content_filter", ["content_filter"])


def test_an_error_body_in_a_json_array_keeps_its_message():
    """Google's streaming endpoint sends its HTTP errors as a JSON array of one error object:
    the provider's message (what the client must fix) was lost for a generic one."""
    body = json.dumps(fg.error_list(400, "INVALID_ARGUMENT", "Invalid value at 'contents[0].parts[0]'")).encode()
    err = ADAPTER.error(ctx({"messages": [USER], "stream": True}), 400, [], body)
    assert (err.status, err.message) == (400, "Invalid value at 'contents[0].parts[0]'")
    assert ADAPTER.error(ctx({"messages": [USER]}), 429, [], json.dumps(fg.error_list(429, "RESOURCE_EXHAUSTED", "slow")).encode()).status == 429
    assert ADAPTER.error(ctx({"messages": [USER]}), 400, [], b"[]").status == 400  # no object: the status speaks


def test_a_streamed_blocked_prompt_ends_as_its_answer_does():
    """A blocked prompt's stream is one fragment with `promptFeedback.blockReason`, no candidates
    and no finishReason: the same answer as unstreamed, `content_filter` with the prompt's usage."""
    wire = b"data: " + json.dumps(fg.blocked_prompt("gemini-x")).encode() + b"\r\n\r\n"
    chunks, usage = client_view(wire, [])
    s = summarize(chunks)
    assert s["finishes"] == ["content_filter"] and s["text"] == ""
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 0)
    whole = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(fg.blocked_prompt("gemini-x")).encode())[0])
    assert whole["choices"][0]["finish_reason"] == "content_filter"


def test_a_fragment_of_usage_alone_does_not_end_a_stream():
    """Only a blocked prompt ends a stream without a finishReason: a fragment with no candidates
    and no blockReason (usage alone) does not pass a cut-off stream for a whole one."""
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    translator.feed(b"data: " + json.dumps({"usageMetadata": {"promptTokenCount": 3}, "responseId": "r"}).encode() + b"\r\n\r\n")
    with pytest.raises(GatewayError):
        translator.flush()


TOOL_WIRE = b"".join(fg.sse_bytes("gemini-x", with_tool=True))


def client_view(data: bytes, cuts: list[int]) -> tuple[list[dict], Any]:
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}))
    return streams.client_view(translator, data, cuts)


def test_stream_whole():
    chunks, usage = client_view(TOOL_WIRE, [])
    s = summarize(chunks)
    assert s["text"] == fg.REPLY and s["finishes"] == ["tool_calls"]
    assert s["calls"] == {0: {"id": s["calls"][0]["id"], "name": "get_weather",
                              "arguments": json.dumps(fg.TOOL_ARGS, separators=(",", ":"))}}
    whole = json.loads(ADAPTER.response(ctx({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}), 200,
                                        json.dumps(fg.whole_body("gemini-x", True)).encode())[0])
    assert whole["choices"][0]["message"]["tool_calls"][0]["id"] == s["calls"][0]["id"]  # the same answer, the same id
    assert s["usage"][0]["completion_tokens_details"] == {"reasoning_tokens": 6} and usage.cached_tokens == 16
    assert "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]) == "thinking..."


def test_a_streams_thoughts_and_tool_call_count_as_streamed_text():
    """Billed from streamed_text() when no usage comes (a client gone, a drain): the thoughts
    and the call's arguments were generated too, as the Anthropic and Bedrock relays count them."""
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    translator.feed(TOOL_WIRE)
    args = json.dumps(fg.TOOL_ARGS, separators=(",", ":"))
    assert translator.streamed_text() == "thinking..." + fg.REPLY + args


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_WIRE)), max_size=12))
def test_stream_any_split(cuts):
    assert summarize(client_view(TOOL_WIRE, cuts)[0]) == summarize(client_view(TOOL_WIRE, [])[0])


def test_stream_without_finish_reason_is_an_error():
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    translator.feed(b"".join(fg.sse_bytes("g", False)[:2]))
    with pytest.raises(GatewayError):
        translator.flush()


def test_error_inside_stream():
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    with pytest.raises(GatewayError) as err:
        translator.feed(b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\r\n\r\n')
    assert err.value.status == 503


@pytest.mark.parametrize("code,status", [(99, 502), (0, 502), (200, 502), (302, 502), (999, 502), (429, 429), (404, 404)])
def test_an_error_events_code_becomes_an_error_status(code, status):
    """The code inside a stream's error event is the upstream's number: only a 4xx or 5xx
    is relayed as such; anything else is no status a client can be given."""
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    event = json.dumps({"error": {"code": code, "message": "m"}}).encode()
    with pytest.raises(GatewayError) as err:
        translator.feed(b"data: " + event + b"\r\n\r\n")
    assert err.value.status == status


# -- finish reasons that say the generation failed --------------------------------------------

# Gemini's FinishReason values that end a candidate the model did not complete: the tool-calling
# failures, the unspecified ones, and an image the model was to make and did not.
FAILED = ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER",
          "FINISH_REASON_UNSPECIFIED", "NO_IMAGE", "IMAGE_OTHER", "A_REASON_GOOGLE_ADDS_LATER"]


def _failed_stream(reason: str) -> bytes:
    return b"".join(fg.failed_stream("gemini-x", reason))


@pytest.mark.parametrize("reason", FAILED)
def test_a_failed_generation_is_a_502_naming_its_reason_not_a_stop(reason):
    """MALFORMED_FUNCTION_CALL and its kind end a candidate with no content: mapped to "stop",
    the client took an empty answer for a whole one and an agent silently stopped. The answer is
    the upstream's failure, a 502 (which the router retries on the route's next target)."""
    body = json.dumps(fg.failed_finish("gemini-x", reason)).encode()
    with pytest.raises(GatewayError) as failed:
        ADAPTER.response(ctx({"messages": [USER], "tools": [TOOL]}), 200, body)
    err = failed.value
    assert (err.status, err.type, err.code) == (502, "api_error", "upstream_error")
    assert f"'{reason}'" in err.message and "'g'" in err.message  # the reason and the provider


@pytest.mark.parametrize("reason", FAILED[:-1])
def test_a_failed_generation_streamed_ends_in_an_error_after_what_came(reason):
    """Streamed, the text sent before the failure stays with the client; the stream then ends
    with the same error (the proxy makes it the client API's error event), never a finish chunk."""
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    first, last = _failed_stream(reason).split(b"\r\n\r\n", 1)
    assert b'"content":"Let me look"' in translator.feed(first + b"\r\n\r\n")
    with pytest.raises(GatewayError) as failed:
        translator.feed(last)
        translator.flush()
    assert (failed.value.status, failed.value.code) == (502, "upstream_error") and f"'{reason}'" in failed.value.message


def test_missing_thought_signature_is_the_requests_400():
    """MISSING_THOUGHT_SIGNATURE says the history sent back a Gemini 3 call without the signature
    Gemini gave it: the request's fault (Gemini's own HTTP answer to it is a 400), which the
    client fixes by sending `extra_content.google.thought_signature` back as it came."""
    body = json.dumps(fg.failed_finish("gemini-3-pro-preview", "MISSING_THOUGHT_SIGNATURE")).encode()
    with pytest.raises(GatewayError) as failed:
        ADAPTER.response(ctx({"messages": [USER]}), 200, body)
    assert (failed.value.status, failed.value.type) == (400, "invalid_request_error")
    assert "thought_signature" in failed.value.message and failed.value.param == "messages"
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    with pytest.raises(GatewayError) as streamed:
        translator.feed(_failed_stream("MISSING_THOUGHT_SIGNATURE"))
    assert streamed.value.status == 400


def test_an_unsupported_language_is_content_filter_streamed_or_not():
    """LANGUAGE: "the response candidate content was flagged for using an unsupported language".
    A flag on the content, as the safety stops are, and the same on every retry: content_filter."""
    body = fg.whole_body("gemini-x", False)
    body["candidates"][0]["finishReason"] = "LANGUAGE"
    whole = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])
    frags = fg.fragments("gemini-x", False)
    frags[-1]["candidates"][0]["finishReason"] = "LANGUAGE"
    chunks, _ = client_view(b"".join(b"data: " + json.dumps(f).encode() + b"\r\n\r\n" for f in frags), [])
    assert (whole["choices"][0]["finish_reason"], summarize(chunks)["finishes"]) == ("content_filter", ["content_filter"])


def test_a_reason_google_adds_later_is_served_as_a_stop_when_an_answer_came():
    """A finish reason this gateway has no word for fails only an answer with nothing in it (the
    502 above): with text or a call to show, it is served as a stop, so a benign reason Google
    adds later cannot turn every answer of a model into an error."""
    body = fg.whole_body("gemini-x", False)
    body["candidates"][0]["finishReason"] = "A_REASON_GOOGLE_ADDS_LATER"
    whole = json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])
    assert whole["choices"][0]["finish_reason"] == "stop" and whole["choices"][0]["message"]["content"]
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    out = translator.feed(_failed_stream("A_REASON_GOOGLE_ADDS_LATER")) + translator.flush()
    assert b'"content":"Let me look"' in out and b'"finish_reason":"stop"' in out

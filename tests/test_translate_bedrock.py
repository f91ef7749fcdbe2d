"""OpenAI chat <-> Bedrock Converse: request and response tables, and ConverseStream's binary
eventstream split at every boundary. The fake's frames are checked with botocore's decoder."""
from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import streams
from tests.fakes import bedrock_upstream as fb
from tests.streams import summarize
from tests.timing import cpu_best
from tollway.core.config import Provider
from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext
from tollway.core.providers.chat.bedrock import OpenAIToBedrock
from tollway.core.providers.wire.eventstream import MAX_FRAME_BYTES
from tollway.core.request import parse_head

PROVIDER = Provider(name="aws", schema="bedrock", region="eu-west-1")
ADAPTER = OpenAIToBedrock()
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}
USER = {"role": "user", "content": "hi"}


def ctx(body: dict[str, Any], provider: Provider = PROVIDER) -> CallContext:
    raw = json.dumps({"model": "m", **body}).encode()
    return CallContext("chat", raw, parse_head(raw), MODEL, provider, 1_700_000_000.0)


def test_url_encodes_model_id_and_picks_stream_path():
    call = ADAPTER.build(ctx({"messages": [USER]}))
    assert call.url == "https://bedrock-runtime.eu-west-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    streamed = ADAPTER.build(ctx({"messages": [USER], "stream": True}, Provider(name="v", schema="bedrock", region="x",
                                                                              base_url="https://vpce.example/")))
    assert streamed.url.startswith("https://vpce.example/model/") and streamed.url.endswith("/converse-stream")
    assert ("accept", "application/vnd.amazon.eventstream") in streamed.headers and streamed.stream
    assert not any(k == "authorization" for k, _ in call.headers)  # SigV4 signs later


def test_api_key_is_a_bearer_token():
    call = ADAPTER.build(ctx({"messages": [USER]}, Provider(name="k", schema="bedrock", region="x", api_key="bk-1")))
    assert ("authorization", "Bearer bk-1") in call.headers


REQUESTS = [
    ("basic", {"messages": [{"role": "system", "content": "sys"}, USER], "max_tokens": 9, "temperature": 0.2, "stop": ["X"]},
     {"system": [{"text": "sys"}], "messages": [{"role": "user", "content": [{"text": "hi"}]}],
      "inferenceConfig": {"maxTokens": 9, "temperature": 0.2, "stopSequences": ["X"]}}),
    ("no inference config when none set", {"messages": [USER]}, {"inferenceConfig": None, "toolConfig": None}),
    ("tools + required", {"messages": [USER], "tools": [TOOL], "tool_choice": "required"},
     {"toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}, "description": "d"}}],
                     "toolChoice": {"any": {}}}}),
    ("named tool", {"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {"toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}, "description": "d"}}],
                     "toolChoice": {"tool": {"name": "get_weather"}}}}),
    ("an empty tool description is left out (AWS: at least 1 character)",
     {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}]},
     {"toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}}),
    ("tool none drops tools", {"messages": [USER], "tools": [TOOL], "tool_choice": "none"}, {"toolConfig": None}),
    ("tool round trip, merged user turn", {"tools": [TOOL], "messages": [
        USER, {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "42"}, {"role": "user", "content": "ok?"}]},
     {"messages": [{"role": "user", "content": [{"text": "hi"}]},
                   {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}}]},
                   {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "42"}]}}, {"text": "ok?"}]}]}),
    ("inline image", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]}]},
     {"messages": [{"role": "user", "content": [{"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}}]}]}),
]


@pytest.mark.parametrize("name,body,expected", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name, body, expected):
    out = json.loads(ADAPTER.build(ctx(body)).body)
    assert {k: out.get(k) for k in expected} == expected


# -- a tool history without tools ----------------------------------------------------------
# Converse refuses toolUse/toolResult blocks without a toolConfig (400 ValidationException "The
# toolConfig field must be defined when using toolUse and toolResult content blocks."); OpenAI takes
# such a request (a summary after an agent loop). Without tools the history goes as text.

def call(call_id: str, city: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}}


TOOL_HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "Checking both.", "tool_calls": [call("c1", "Paris"), call("c2", "Rome")]},
    {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "21"}, {"type": "text", "text": "C"}]},
    {"role": "user", "content": "Summarise."},
]
TOOL_HISTORY_AS_TEXT = {
    "messages": [
        {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [{"text": "Checking both."},
                                          {"text": 'Tool call c1: get_weather({"city":"Paris"})'},
                                          {"text": 'Tool call c2: get_weather({"city":"Rome"})'}]},
        {"role": "user", "content": [{"text": "Tool result for c1 (get_weather): 18C"},
                                     {"text": "Tool result for c2 (get_weather): 21\nC"},
                                     {"text": "Summarise."}]}],
    "system": [{"text": "Be brief."}],
}


@pytest.mark.parametrize("tools", [{}, {"tools": []}], ids=["no tools", "empty tools"])
def test_a_tool_history_without_tools_is_sent_as_text(tools):
    assert json.loads(ADAPTER.build(ctx({"messages": TOOL_HISTORY, **tools})).body) == TOOL_HISTORY_AS_TEXT


def test_a_tool_results_image_stays_an_image_without_tools():
    result = {"role": "tool", "tool_call_id": "c1", "content": [
        {"type": "text", "text": "the map"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}
    out = json.loads(ADAPTER.build(ctx({"messages": [USER, {"role": "assistant", "tool_calls": [call("c1", "Paris")]},
                                                     result]})).body)
    assert out["messages"][-1] == {"role": "user", "content": [
        {"text": "Tool result for c1 (get_weather): the map"}, {"image": {"format": "png", "source": {"bytes": "iVBO"}}}]}
    assert "toolConfig" not in out


def test_an_empty_tool_result_or_unknown_call_is_named_alone():
    out = json.loads(ADAPTER.build(ctx({"messages": [
        USER, {"role": "assistant", "tool_calls": [call("c1", "Paris")]},
        {"role": "tool", "tool_call_id": "c1", "content": ""}, {"role": "tool", "tool_call_id": "c9", "content": "x"}]})).body)
    assert out["messages"][-1]["content"] == [{"text": "Tool result for c1 (get_weather):"}, {"text": "Tool result for c9: x"}]


def test_a_tool_history_with_tools_keeps_its_blocks():
    out = json.loads(ADAPTER.build(ctx({"messages": TOOL_HISTORY, "tools": [TOOL]})).body)
    assert out["messages"][1]["content"][1] == {"toolUse": {"toolUseId": "c1", "name": "get_weather", "input": {"city": "Paris"}}}
    assert out["messages"][2]["content"][1] == {"toolResult": {"toolUseId": "c2", "content": [{"text": "21\nC"}]}}
    assert out["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


def test_tool_choice_none_with_a_tool_history_sends_it_as_text_and_no_tools():
    # Converse has no "none": the tools are left out, and with them the history's tool blocks
    # (which Converse takes only with a toolConfig) go as text: the model can call none.
    out = json.loads(ADAPTER.build(ctx({"messages": TOOL_HISTORY, "tools": [TOOL], "tool_choice": "none"})).body)
    without = json.loads(ADAPTER.build(ctx({"messages": TOOL_HISTORY})).body)
    assert "toolConfig" not in out and out["messages"] == without["messages"]
    assert not any("toolUse" in b or "toolResult" in b for m in out["messages"] for b in m["content"])


def test_bad_tool_arguments_are_a_400_without_tools_too():
    bad = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    with pytest.raises(GatewayError) as err:
        ADAPTER.build(ctx({"messages": [USER, {"role": "assistant", "tool_calls": [bad]}]}))
    assert err.value.status == 400 and err.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [USER], "n": 3}, "n"),
])
def test_untranslatable_is_400(body, param):
    with pytest.raises(GatewayError) as err:
        ADAPTER.build(ctx(body))
    assert err.value.status == 400 and err.value.param == param


@pytest.mark.parametrize("with_tool,finish", [(False, "stop"), (True, "tool_calls")])
def test_response_translation(with_tool, finish):
    out, usage = ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(fb.converse_body(with_tool)).encode())
    doc = json.loads(out)
    choice = doc["choices"][0]
    assert choice["finish_reason"] == finish and choice["message"]["content"] == fb.REPLY
    calls = choice["message"].get("tool_calls") or []
    assert [json.loads(c["function"]["arguments"]) for c in calls] == ([fb.TOOL_INPUT] if with_tool else [])
    assert doc["usage"]["prompt_tokens"] == 37 and doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    assert (usage.completion_tokens, usage.cache_write_tokens) == (12, 2)


def test_max_tokens_stop_is_length():
    body = {**fb.converse_body(False), "stopReason": "max_tokens"}
    assert json.loads(ADAPTER.response(ctx({"messages": [USER]}), 200, json.dumps(body).encode())[0])["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("status,kind,client_status", [
    (429, "ThrottlingException", 429), (400, "ValidationException", 400), (403, "AccessDeniedException", 502),
    (503, "ServiceUnavailableException", 503), (500, "InternalServerException", 502),
])
def test_http_error_mapping(status, kind, client_status):
    err = ADAPTER.error(ctx({"messages": [USER]}), status, [("retry-after", "3")], json.dumps({"message": kind}).encode())
    assert err.status == client_status
    if client_status == 429:
        assert err.headers == [("retry-after", "3")]


# -- the eventstream --------------------------------------------------------------------

def test_fake_frames_decode_with_botocore():
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(fb.stream_frames(with_tool=True)))
    messages = list(buffer)
    kinds = [m.headers[":event-type"] for m in messages]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert json.loads(messages[-1].payload)["usage"] == fb.USAGE


TOOL_WIRE = b"".join(fb.stream_frames(with_tool=True))


def client_view(data: bytes, cuts: list[int]) -> tuple[list[dict], Any]:
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}))
    return streams.client_view(translator, data, cuts)


def test_stream_whole():
    chunks, usage = client_view(TOOL_WIRE, [])
    s = summarize(chunks)
    assert s["text"] == fb.REPLY and s["finishes"] == ["tool_calls"]
    assert s["calls"] == {0: {"id": "tooluse_fake01", "name": "get_weather", "arguments": json.dumps(fb.TOOL_INPUT)}}
    assert s["usage"][0]["prompt_tokens"] == 37 and s["usage"][0]["completion_tokens"] == 12
    assert usage.cached_tokens == 5


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_WIRE)), max_size=12))
def test_stream_any_split(cuts):
    assert summarize(client_view(TOOL_WIRE, cuts)[0]) == summarize(client_view(TOOL_WIRE, [])[0])


def test_stream_every_single_cut_point():
    expected = summarize(client_view(TOOL_WIRE, [])[0])
    for cut in range(0, len(TOOL_WIRE) + 1, 3):
        assert summarize(client_view(TOOL_WIRE, [cut])[0]) == expected


def test_exception_frame_becomes_mapped_error():
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    with pytest.raises(GatewayError) as err:
        translator.feed(b"".join(fb.stream_frames(False, throttle_midway=True)))
    assert err.value.status == 429 and "Too many tokens" in err.value.message


def test_corrupt_frame_is_502():
    data = bytearray(fb.stream_frames(False)[0])
    data[-1] ^= 0xFF  # break the message CRC
    with pytest.raises(GatewayError) as err:
        ADAPTER.stream(ctx({"messages": [USER], "stream": True})).feed(bytes(data))
    assert err.value.status == 502


def test_stream_cut_before_message_stop_is_an_error():
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
    translator.feed(b"".join(fb.stream_frames(False)[:3]))
    with pytest.raises(GatewayError):
        translator.flush()


def test_frames_after_the_metadata_are_ignored():
    # The metadata frame ended the stream ([DONE] sent): a hostile upstream's later frames send
    # nothing more, are not counted, and cannot end the stream a second time.
    late = [fb.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " AFTER"}}),
            fb.event("messageStop", {"stopReason": "end_turn"}),
            fb.event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 9999, "totalTokens": 10000}})]
    translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}))
    out = translator.feed(b"".join(fb.stream_frames(False) + late)) + translator.flush()
    assert out.count(b"[DONE]") == 1 and out.endswith(b"data: [DONE]\n\n") and b"AFTER" not in out
    assert translator.streamed_text() == fb.REPLY and translator.usage.completion_tokens == 12


@pytest.mark.parametrize("with_tool", [False, True])
def test_a_repeated_message_stop_sends_one_finish(with_tool):
    # A messageStop repeated before the metadata (another stop reason, even) ends the answer once.
    frames = fb.stream_frames(with_tool)
    again = fb.event("messageStop", {"stopReason": "max_tokens"})
    chunks, _ = client_view(b"".join(frames[:-1] + [again] + frames[-1:]), [])
    assert summarize(chunks)["finishes"] == ["tool_calls" if with_tool else "stop"]

def text_frame(size: int) -> bytes:
    """One contentBlockDelta frame carrying `size` bytes of text."""
    return fb.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x" * size}})


def test_large_frame_in_small_pieces_is_linear():
    """botocore's buffer appended each piece to one bytes object: a 23 MiB frame in 4 KiB
    pieces took 19.5 s of the worker's loop. Frames are now cut out of one growing buffer."""

    def cost(size: int) -> float:
        data = text_frame(size)

        def feed() -> list[bytes]:
            translator = ADAPTER.stream(ctx({"messages": [USER], "stream": True}))
            return [translator.feed(data[i : i + 4096]) for i in range(0, len(data), 4096)]

        assert json.loads(b"".join(feed()).removeprefix(b"data: "))["choices"][0]["delta"]["content"] == "x" * size
        return cpu_best(feed)

    small, large = cost(1 << 20), cost(10 << 20)
    # 10x the bytes: ~10x the time when linear, ~100x when quadratic (a ratio, not a wall-clock
    # bound: a slow or loaded machine scales both)
    assert large < 30 * max(small, 0.01), (small, large)


def test_frame_over_the_bound_is_refused_at_its_prelude():
    too_long = MAX_FRAME_BYTES + 1
    prelude = struct.pack(">II", too_long, 0)
    prelude += struct.pack(">I", zlib.crc32(prelude))
    with pytest.raises(GatewayError) as err:
        ADAPTER.stream(ctx({"messages": [USER], "stream": True})).feed(prelude)  # nothing past it is waited for
    assert (err.value.status, err.value.code) == (502, "upstream_too_large")
    assert err.value.message == ("The upstream provider 'aws' sent an event stream frame larger than this "
                                 f"gateway's limit of {MAX_FRAME_BYTES} bytes.")


@pytest.mark.parametrize("prelude", [
    struct.pack(">III", 100, 0, 0),  # a CRC that does not vouch for the lengths
    struct.pack(">II", 20, 8) + struct.pack(">I", zlib.crc32(struct.pack(">II", 20, 8))),  # headers past the end
])
def test_corrupt_prelude_is_502_at_once(prelude):
    with pytest.raises(GatewayError) as err:
        ADAPTER.stream(ctx({"messages": [USER], "stream": True})).feed(prelude)
    assert (err.value.status, err.value.code) == (502, "upstream_malformed")
    assert err.value.message == "The upstream provider sent a corrupt event stream frame."


def test_headers_that_overrun_their_section_are_a_corrupt_frame():
    head = b"\x05:name"  # a name, then no type byte
    total = 12 + len(head) + 2 + 4
    prelude = struct.pack(">II", total, len(head))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + b"{}"
    with pytest.raises(GatewayError) as err:
        ADAPTER.stream(ctx({"messages": [USER], "stream": True})).feed(body + struct.pack(">I", zlib.crc32(body)))
    assert (err.value.status, err.value.code) == (502, "upstream_malformed")


@pytest.mark.parametrize("payload", [b"\x00binary", b'{"delta": "a string where a known event has an object"}'])
def test_an_event_type_the_translator_does_not_know_is_skipped_unread(payload):
    # A ConverseStream event type added after this translator was written is ignored, whatever
    # its payload holds: decoding it against the known events' fields first made a new event's
    # unexpected shape (or a non-JSON one) end a good answer as 502 upstream_malformed.
    unknown = fb.frame({":event-type": "someFutureEvent", ":content-type": "application/json",
                        ":message-type": "event"}, payload)
    frames = fb.stream_frames(False)
    chunks, usage = client_view(b"".join(frames[:2] + [unknown] + frames[2:]), [])
    assert summarize(chunks)["text"] == fb.REPLY and usage.completion_tokens == 12

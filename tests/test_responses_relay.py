"""The Responses API pass-through's stream relay (core/providers/openai_compat.py): the bytes go
through untouched, usage is read from whichever event ends the stream, and the generated text
is kept for counting when no usage came. Unit tables on the relay itself; the end to end
checks with the openai SDK are in test_e2e_openai.py."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tollway.core.errors import GatewayError
from tollway.core.providers.openai_compat import ResponsesStreamRelay


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def delta(kind: str, text: str) -> bytes:
    return event(f"response.{kind}.delta", item_id="it_1", output_index=0, delta=text)


CREATED = event("response.created", response={"id": "resp_1", "status": "in_progress", "usage": None})
COMPLETED = event("response.completed", response={"id": "resp_1", "status": "completed", "usage": None})
USAGE = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500,
         "input_tokens_details": {"cached_tokens": 200}, "output_tokens_details": {"reasoning_tokens": 300}}


@pytest.mark.parametrize("kind", ["output_text", "refusal", "function_call_arguments", "reasoning_text",
                                  "reasoning_summary_text", "custom_tool_call_input", "mcp_call_arguments",
                                  "code_interpreter_call_code"])
def test_every_generated_text_delta_is_kept_for_counting(kind):
    stream = CREATED + delta(kind, "Hello") + delta(kind, ", world") + COMPLETED
    relay = ResponsesStreamRelay()
    assert relay.feed(stream) + relay.flush() == stream  # relayed byte for byte
    assert relay.usage is None and relay.streamed_text() == "Hello, world"


def test_other_deltas_and_repeated_texts_are_not_counted():
    # The .done events and response.completed repeat the text; audio deltas are base64, not text.
    stream = (CREATED + delta("output_text", "Hi") + event("response.output_text.done", text="Hi")
              + delta("audio", "UklGRg==") + event("response.output_item.done", item={"content": [{"text": "Hi"}]})
              + COMPLETED)
    relay = ResponsesStreamRelay()
    relay.feed(stream)
    assert relay.streamed_text() == "Hi"


def test_text_split_anywhere_is_kept_whole():
    stream = CREATED + delta("output_text", "one ") + delta("function_call_arguments", '{"a": 1}') + COMPLETED
    for cut in range(1, len(stream)):
        relay = ResponsesStreamRelay()
        relay.feed(stream[:cut])
        relay.feed(stream[cut:])
        relay.flush()
        assert relay.streamed_text() == 'one {"a": 1}', cut


@pytest.mark.parametrize("kind, status", [("response.completed", "completed"), ("response.incomplete", "incomplete"),
                                          ("response.failed", "failed")])
def test_usage_is_read_from_whichever_event_ends_the_stream(kind, status):
    relay = ResponsesStreamRelay()
    relay.feed(CREATED + delta("output_text", "Hi") + event(kind, response={"status": status, "usage": USAGE}))
    assert relay.flush() == b""
    u = relay.usage
    assert u is not None and (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (1000, 500, 1500)
    assert (u.cached_tokens, u.reasoning_tokens) == (200, 300)


def test_the_upstreams_error_event_ends_the_stream():
    relay = ResponsesStreamRelay()
    relay.feed(CREATED + delta("output_text", "Hi") + event("error", code="server_error", message="boom", param=None))
    assert relay.flush() == b"" and relay.usage is None and relay.streamed_text() == "Hi"


@pytest.mark.parametrize("tail", [b"", b"event: response.completed\ndata: {\"type\": \"response.comp"])
def test_a_stream_cut_before_its_end_is_an_error_and_keeps_its_text(tail):
    relay = ResponsesStreamRelay()
    relay.feed(CREATED + delta("output_text", "Hello") + tail)
    with pytest.raises(GatewayError) as cut:
        relay.flush()
    assert cut.value.status == 502 and cut.value.code == "upstream_disconnected"
    assert relay.usage is None and relay.streamed_text() == "Hello"  # counted, as the proxy does without usage


def test_a_closing_event_without_its_blank_line_still_ends_the_stream():
    relay = ResponsesStreamRelay()
    end = event("response.completed", response={"usage": USAGE})
    out = relay.feed(CREATED + end[:-1])
    assert out + relay.flush() == CREATED + end[:-1] and relay.usage is not None


@pytest.mark.parametrize("end", [
    # a usage the relay cannot read (a count as a float): the stream still ended, its text is counted
    event("response.completed", response={"status": "completed", "usage": {**USAGE, "input_tokens": 3.0}}),
    # the closing event named on its `event:` line only
    b"event: response.completed\ndata: " + json.dumps({"response": {"usage": USAGE}}).encode() + b"\n\n",
])
def test_a_closing_event_ends_the_stream_whether_or_not_its_usage_can_be_read(end):
    relay = ResponsesStreamRelay()
    relay.feed(CREATED + delta("output_text", "Hi") + end)
    assert relay.flush() == b""  # not an "unfinished" error after a whole answer
    assert relay.streamed_text() == "Hi"

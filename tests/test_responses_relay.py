"""The Responses API pass-through's stream relay (core/providers/openai_compat.py): the bytes go
through untouched, usage is read from whichever event ends the stream, and the generated text
is kept for counting when no usage came. Unit tables on the relay itself; the end to end
checks with the openai SDK are in test_e2e_openai.py."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tollway.core.providers.openai_compat import ResponsesStreamRelay


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def delta(kind: str, text: str) -> bytes:
    return event(f"response.{kind}.delta", item_id="it_1", output_index=0, delta=text)


CREATED = event("response.created", response={"id": "resp_1", "status": "in_progress", "usage": None})
COMPLETED = event("response.completed", response={"id": "resp_1", "status": "completed", "usage": None})


@pytest.mark.parametrize("kind", ["output_text", "refusal", "function_call_arguments", "reasoning_text",
                                  "reasoning_summary_text"])
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

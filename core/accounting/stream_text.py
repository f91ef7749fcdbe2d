"""The generated text in one chunk of a stream as the client receives it, for counting it as
it goes (tollway.gateway.limits.stream_stop stops a stream that would pass its limits).

A chunk is whole SSE events in the client API's shape. The pieces found are the ones a
stream's usage is counted from (`tollway.ext.sse.streamed_text`, `completion_text`):

    OpenAI chat          choices[].delta.content, .refusal, .reasoning_content (vLLM, DeepSeek,
                         and the gateway's own translation of Claude's and Bedrock's thinking)
                         or .reasoning (OpenRouter, Groq, newer vLLM; never both: a server
                         renaming the field may send both, the same text),
                         .tool_calls[].function.arguments
    legacy completions   choices[].text
    Anthropic messages   content_block_delta: delta.text, .partial_json, .thinking
    Responses API        response.*.delta events: their string `delta`

One typed decoder reads every shape (unknown fields are skipped, which is what makes it cheap:
~1 us for a usual chunk, against ~10 us for a decode into dicts). An event that is not of those
shapes (a `ping`, `[DONE]`, an object whose fields have other types) yields nothing: its text,
if any, could not be shown by a client either. Sans-IO: bytes in, strings out.
"""
from __future__ import annotations

import msgspec

__all__ = ["chunk_texts"]


class _Function(msgspec.Struct):
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None  # OpenAI chat
    refusal: str | None = None
    reasoning_content: str | None = None  # output tokens too: a thinking model's may be thousands
    reasoning: str | None = None  # the same, by another name
    tool_calls: list[_ToolCall] | None = None
    text: str | None = None  # Anthropic text_delta
    partial_json: str | None = None  # Anthropic input_json_delta
    thinking: str | None = None  # Anthropic thinking_delta


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None  # a legacy completions chunk


class _Event(msgspec.Struct):
    choices: list[_Choice] | None = None
    delta: _Delta | str | None = None  # Anthropic's object; the Responses API's string


_decode = msgspec.json.Decoder(_Event).decode


def chunk_texts(out: bytes) -> list[str]:
    """The non-empty text pieces of every event's data line in `out`."""
    found: list[str] = []
    at = out.find(b"data:")
    while at >= 0:
        end = out.find(b"\n", at)
        line = out[at + 5:end if end >= 0 else len(out)].strip()
        at = out.find(b"data:", end) if end >= 0 else -1
        if line[:1] != b"{":
            continue
        try:
            event = _decode(line)
        except msgspec.DecodeError:  # (ValidationError is one) not a shape that carries text
            continue
        choices, delta = event.choices, event.delta
        if choices:
            for choice in choices:
                if choice.delta is not None:
                    _delta(choice.delta, found)
                if choice.text:
                    found.append(choice.text)
        if delta is not None:
            if isinstance(delta, str):
                if delta:
                    found.append(delta)
            else:
                _delta(delta, found)
    return found


def _delta(delta: _Delta, found: list[str]) -> None:
    if delta.content:
        found.append(delta.content)
    for text in (delta.refusal, delta.reasoning_content or delta.reasoning, delta.text, delta.partial_json, delta.thinking):
        if text:
            found.append(text)
    if delta.tool_calls:
        for call in delta.tool_calls:
            if call.function is not None and call.function.arguments:
                found.append(call.function.arguments)

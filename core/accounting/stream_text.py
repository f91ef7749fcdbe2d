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
    Responses API        the string `delta` of the events in RESPONSES_TEXT_DELTAS (an event's
                         type is its data's `type`, else its `event:` line's name)

One typed decoder reads every shape (unknown fields are skipped, which is what makes it cheap:
~1 us for a usual chunk, against ~10 us for a decode into dicts). An event that is not of those
shapes (a `ping`, `[DONE]`, an object whose fields have other types) yields nothing: its text,
if any, could not be shown by a client either. Sans-IO: bytes in, strings out.
"""
from __future__ import annotations

import msgspec

__all__ = ["RESPONSES_TEXT_DELTAS", "chunk_texts"]

# The Responses API's deltas of generated text: every one is output tokens, and the same text a
# whole answer's output items carry (completion_text). The one table for limits (`chunk_texts`)
# and billing (the Responses relay, tollway.core.providers.openai_compat). Not in it:
# `response.audio.delta` (base64: the audio's own tokens, priced as audio) and
# `response.audio.transcript.delta` (what the audio says, again).
RESPONSES_TEXT_DELTAS = frozenset((
    "response.output_text.delta", "response.refusal.delta", "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta", "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta", "response.mcp_call_arguments.delta",
    "response.code_interpreter_call_code.delta",
))


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
    type: str | None = None  # a Responses API event's (and Anthropic's)
    choices: list[_Choice] | None = None
    delta: _Delta | str | None = None  # Anthropic's object; the Responses API's string


_decode = msgspec.json.Decoder(_Event).decode


def chunk_texts(out: bytes) -> list[str]:
    """The non-empty text pieces of every event's data line in `out`."""
    found: list[str] = []
    at = out.find(b"data:")
    while at >= 0:
        line_at, end = at, out.find(b"\n", at)
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
                if delta and (event.type or _event_name(out, line_at)) in RESPONSES_TEXT_DELTAS:
                    found.append(delta)
            else:
                _delta(delta, found)
    return found


def _event_name(out: bytes, data_at: int) -> str:
    """The `event:` line's name of the event whose data line starts at `data_at` ("" if none):
    the relay reads an event without a `type` by that name, and so must the count."""
    # (chunks hold whole events: the previous one ends at the last blank line, LF or CRLF)
    start = max(out.rfind(b"\n\n", 0, data_at), out.rfind(b"\n\r\n", 0, data_at))
    at = out.find(b"event:", start + 1 if start >= 0 else 0, data_at)
    if at < 0:
        return ""
    end = out.find(b"\n", at, data_at)
    return out[at + 6:end if end >= 0 else data_at].strip().decode("ascii", "replace")


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

"""The generated text of a non-stream response body (OpenAI's shapes and Anthropic's message),
for counting its tokens.

When an upstream answers without `usage`, the gateway counts the completion with tiktoken,
as it does for streams (`tollway.ext.sse.streamed_text`, the Responses relay's deltas, and the
limiter's `tollway.core.accounting.stream_text`). This module finds that text in a whole
response body: the same parts a stream's chunks carry, so a streamed and a non-stream answer
count alike:

    OpenAI chat          message.reasoning_content (or .reasoning), .content, .refusal,
                         .tool_calls[].function.arguments
    legacy completions   choices[].text
    Responses API        output[]: content[].text and .refusal (a message's text and refusal
                         parts, a reasoning item's reasoning text), a reasoning item's
                         summary[].text, a function or MCP call's `arguments`, a custom tool
                         call's `input`, a code interpreter call's `code`
    Anthropic messages   content[]: text, thinking, tool_use input

The body comes from an upstream and may be anything, so decoding is typed but forgiving:
unknown fields are ignored, and a body that is not the expected shape yields "" (counted as
no output) instead of raising. Sans-IO: bytes in, str out.
"""
from __future__ import annotations

from collections.abc import Callable

import msgspec

from tollway.core.providers.base import ClientAPI

__all__ = ["completion_text"]


class _Function(msgspec.Struct):
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    function: _Function | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    refusal: str | None = None  # a `refusal` part's text


class _Message(msgspec.Struct):
    # A string in OpenAI's schema; some compatible servers send a list of text parts.
    content: str | list[_Part] | None = None
    refusal: str | None = None
    # A thinking model's reasoning, output tokens too: `reasoning_content` (vLLM, DeepSeek, the
    # gateway's own translations), `reasoning` (OpenRouter, Groq, newer vLLM, which may send both).
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _ChatChoice(msgspec.Struct):
    message: _Message | None = None


class _ChatBody(msgspec.Struct):
    choices: list[_ChatChoice] | None = None


class _TextChoice(msgspec.Struct):
    text: str | None = None


class _CompletionsBody(msgspec.Struct):
    choices: list[_TextChoice] | None = None


class _OutputItem(msgspec.Struct):
    content: list[_Part] | None = None  # a `message` item's output_text and refusal parts; a reasoning item's text
    summary: list[_Part] | None = None  # a `reasoning` item's summary_text parts
    arguments: str | None = None  # a `function_call` or `mcp_call` item's generated arguments
    # A `custom_tool_call` item's freeform input, a string. Kept raw: another item type may give
    # `input` another shape, which must not make the whole body unreadable (counted as no text).
    input: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    code: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # a `code_interpreter_call` item's (raw: as `input`)


class _ResponsesBody(msgspec.Struct):
    output: list[_OutputItem] | None = None


class _Block(msgspec.Struct):
    text: str | None = None
    thinking: str | None = None
    input: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # a tool_use block's, as the JSON it came as


class _MessageBody(msgspec.Struct):
    content: list[_Block] | None = None


_decode_chat = msgspec.json.Decoder(_ChatBody).decode
_decode_completions = msgspec.json.Decoder(_CompletionsBody).decode
_decode_responses = msgspec.json.Decoder(_ResponsesBody).decode
_decode_message = msgspec.json.Decoder(_MessageBody).decode


def _chat_parts(body: bytes) -> list[str]:
    parts: list[str] = []
    for choice in _decode_chat(body).choices or ():
        message = choice.message
        if message is None:
            continue
        # In a stream's order: the reasoning comes first. One of the two names, never both: a
        # server sending both (during vLLM's renaming) sends the same text twice.
        reasoning = message.reasoning_content or message.reasoning
        if reasoning:
            parts.append(reasoning)
        parts += _content_texts(message.content)
        if message.refusal:
            parts.append(message.refusal)
        parts += [c.function.arguments for c in message.tool_calls or () if c.function and c.function.arguments]
    return parts


def _content_texts(content: str | list[_Part] | None) -> list[str]:
    if isinstance(content, str):
        return [content]
    return _part_texts(content)


def _part_texts(parts: list[_Part] | None) -> list[str]:
    return [text for p in parts or () for text in (p.text, p.refusal) if text]


def _completions_parts(body: bytes) -> list[str]:
    return [c.text for c in _decode_completions(body).choices or () if c.text]


def _responses_parts(body: bytes) -> list[str]:
    parts: list[str] = []
    for item in _decode_responses(body).output or ():
        parts += _part_texts(item.summary)  # (streamed before the reasoning text, if any, as OpenAI does)
        parts += _part_texts(item.content)
        if item.arguments:
            parts.append(item.arguments)
        for raw in (item.input, item.code):
            text = _string(raw)
            if text:
                parts.append(text)
    return parts


_decode_string = msgspec.json.Decoder(str).decode


def _string(raw: msgspec.Raw) -> str:
    """The JSON string `raw` is, or "" if it is another value (or none)."""
    value = bytes(raw)
    return _decode_string(value) if value[:1] == b'"' else ""


def _message_parts(body: bytes) -> list[str]:
    parts: list[str] = []
    for block in _decode_message(body).content or ():
        parts += [text for text in (block.text, block.thinking) if text]
        tool_input = bytes(block.input)
        if tool_input not in (b"", b"null"):
            parts.append(tool_input.decode())
    return parts


# Client API (the shape of the body) -> its text parts. APIs missing here, embeddings among
# them, generate no text.
_PARTS: dict[str, Callable[[bytes], list[str]]] = {
    ClientAPI.CHAT: _chat_parts,
    ClientAPI.COMPLETIONS: _completions_parts,
    ClientAPI.RESPONSES: _responses_parts,
    ClientAPI.MESSAGES: _message_parts,
}


def completion_text(api: str, body: bytes) -> str:
    """The generated text in `body`, a non-stream response of the client API `api` (a
    `ClientAPI` value naming the body's shape): the pieces the module's docstring lists. ""
    for embeddings, an unknown API, or a body that is not that API's JSON shape."""
    parts_of = _PARTS.get(api)
    if parts_of is None:
        return ""
    try:
        return "".join(parts_of(body))
    except (msgspec.DecodeError, RecursionError):  # not this shape, or nested past msgspec's depth limit
        return ""

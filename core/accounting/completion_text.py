"""The generated text of a non-stream OpenAI-shaped response body, for counting its tokens.

When an upstream answers without `usage`, the gateway counts the completion with tiktoken,
as it does for streams (`tollway.ext.sse.streamed_text`). This module finds that text in a whole
response body: the same parts a stream's chunks carry (content, legacy `text`, tool-call
arguments), so a streamed and a non-stream answer count alike.

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


class _Message(msgspec.Struct):
    # A string in OpenAI's schema; some compatible servers send a list of text parts.
    content: str | list[_Part] | None = None
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
    content: list[_Part] | None = None  # a `message` item's output_text parts
    arguments: str | None = None  # a `function_call` item's generated arguments


class _ResponsesBody(msgspec.Struct):
    output: list[_OutputItem] | None = None


_decode_chat = msgspec.json.Decoder(_ChatBody).decode
_decode_completions = msgspec.json.Decoder(_CompletionsBody).decode
_decode_responses = msgspec.json.Decoder(_ResponsesBody).decode


def _chat_parts(body: bytes) -> list[str]:
    parts: list[str] = []
    for choice in _decode_chat(body).choices or ():
        message = choice.message
        if message is None:
            continue
        parts += _content_texts(message.content)
        parts += [c.function.arguments for c in message.tool_calls or () if c.function and c.function.arguments]
    return parts


def _content_texts(content: str | list[_Part] | None) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [p.text for p in content or () if p.text]


def _completions_parts(body: bytes) -> list[str]:
    return [c.text for c in _decode_completions(body).choices or () if c.text]


def _responses_parts(body: bytes) -> list[str]:
    parts: list[str] = []
    for item in _decode_responses(body).output or ():
        parts += [p.text for p in item.content or () if p.text]
        if item.arguments:
            parts.append(item.arguments)
    return parts


# Client API (the OpenAI shape of the body) -> its text parts. APIs missing here, embeddings
# among them, generate no text.
_PARTS: dict[str, Callable[[bytes], list[str]]] = {
    ClientAPI.CHAT: _chat_parts,
    ClientAPI.COMPLETIONS: _completions_parts,
    ClientAPI.RESPONSES: _responses_parts,
}


def completion_text(api: str, body: bytes) -> str:
    """The generated text in `body`, a non-stream response of the OpenAI API `api` (a
    `ClientAPI` value naming the body's shape): chat content and tool-call arguments,
    completions' `text`, Responses output text and function-call arguments. "" for
    embeddings, an unknown API, or a body that is not that API's JSON shape."""
    parts_of = _PARTS.get(api)
    if parts_of is None:
        return ""
    try:
        return "".join(parts_of(body))
    except (msgspec.DecodeError, RecursionError):  # not this shape, or nested past msgspec's depth limit
        return ""

"""Anthropic Messages API wire schema (`POST /v1/messages`, its SSE events, its errors).

Content blocks are one flat Struct keyed by `type` rather than a tagged union, so a block
type Anthropic adds later decodes (and is skipped) instead of failing the whole response.
"""
from __future__ import annotations

from typing import Any

import msgspec


class ImageSource(msgspec.Struct, omit_defaults=True):
    type: str  # "base64" | "url" | "file" (a Files API file_id: Anthropic's store only)
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(msgspec.Struct, omit_defaults=True):
    """Any content block: text, image, tool_use, tool_result, thinking, ..."""

    type: str
    text: str | None = None
    source: ImageSource | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    cache_control: dict[str, Any] | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[Block]


class Tool(msgspec.Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None  # server tools ("web_search_...") carry a type


class ToolChoice(msgspec.Struct, omit_defaults=True):
    type: str  # auto | any | tool | none
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(msgspec.Struct, omit_defaults=True):
    user_id: str | None = None


class Thinking(msgspec.Struct, omit_defaults=True):
    type: str
    budget_tokens: int | None = None


class MessagesRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    system: str | list[Block] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: Thinking | None = None


class AnthropicUsage(msgspec.Struct, omit_defaults=True):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageResponse(msgspec.Struct, omit_defaults=False):
    id: str
    model: str
    content: list[Block]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: AnthropicUsage | None = None  # absent: the upstream reported none (never read as zeros)
    type: str = "message"
    role: str = "assistant"


class Delta(msgspec.Struct, omit_defaults=True):
    """The `delta` of content_block_delta (text/input_json/thinking/signature) and of
    message_delta (stop_reason/stop_sequence)."""

    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class StreamEvent(msgspec.Struct, omit_defaults=True):
    """Any SSE event's data: message_start, content_block_*, message_delta, ping, error."""

    type: str
    message: MessageResponse | None = None
    index: int | None = None
    content_block: Block | None = None
    delta: Delta | None = None
    usage: AnthropicUsage | None = None
    error: ErrorDetail | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail
    type: str = "error"


decode_response = msgspec.json.Decoder(MessageResponse).decode
decode_event = msgspec.json.Decoder(StreamEvent).decode
decode_request = msgspec.json.Decoder(MessagesRequest).decode
decode_error = msgspec.json.Decoder(ErrorBody).decode
encode = msgspec.json.Encoder().encode

"""AWS Bedrock Converse / ConverseStream wire schema (camelCase JSON).

Request and response bodies of `POST /model/{modelId}/converse`, and the JSON payloads of
the `application/vnd.amazon.eventstream` frames of `/converse-stream`, whose event type
travels in the frame's `:event-type` header rather than in the payload.
"""
from __future__ import annotations

from typing import Any

import msgspec


class _Wire(msgspec.Struct, omit_defaults=True, rename="camel"):
    pass


class ImageSource(_Wire):
    bytes: str  # base64 in JSON


class ImageBlock(_Wire):
    format: str  # png | jpeg | gif | webp
    source: ImageSource


class ToolUseBlock(_Wire):
    tool_use_id: str
    name: str
    input: Any = None


class ToolResultContent(_Wire):
    text: str | None = None
    json: Any = None


class ToolResultBlock(_Wire):
    tool_use_id: str
    content: list[ToolResultContent]
    status: str | None = None


class ReasoningText(_Wire):
    text: str | None = None
    signature: str | None = None


class ReasoningContent(_Wire):
    reasoning_text: ReasoningText | None = None
    text: str | None = None  # the stream's delta form


class ContentBlock(_Wire):
    text: str | None = None
    image: ImageBlock | None = None
    tool_use: ToolUseBlock | None = None
    tool_result: ToolResultBlock | None = None
    reasoning_content: ReasoningContent | None = None


class Message(_Wire):
    role: str
    content: list[ContentBlock]


class SystemBlock(_Wire):
    text: str


class InferenceConfig(_Wire):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None


class InputSchema(_Wire):
    json: dict[str, Any]


class ToolSpec(_Wire):
    name: str
    input_schema: InputSchema
    description: str | None = None


class Tool(_Wire):
    tool_spec: ToolSpec


class SpecificTool(_Wire):
    name: str


class ToolChoice(_Wire):
    auto: dict[str, Any] | None = None
    any: dict[str, Any] | None = None
    tool: SpecificTool | None = None


class ToolConfig(_Wire):
    tools: list[Tool]
    tool_choice: ToolChoice | None = None


class ConverseRequest(_Wire):
    messages: list[Message]
    system: list[SystemBlock] | None = None
    inference_config: InferenceConfig | None = None
    tool_config: ToolConfig | None = None
    # Model-specific fields Converse passes to the model as they are (Claude's `thinking`).
    additional_model_request_fields: dict[str, Any] | None = None


class TokenUsage(_Wire):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_write_input_tokens: int | None = None


class ConverseOutput(_Wire):
    message: Message | None = None


class ConverseResponse(_Wire):
    output: ConverseOutput
    stop_reason: str | None = None
    usage: TokenUsage | None = None


class ToolUseStart(_Wire):
    tool_use_id: str
    name: str


class BlockStart(_Wire):
    tool_use: ToolUseStart | None = None


class ToolUseDelta(_Wire):
    input: str = ""


class BlockDelta(_Wire):
    text: str | None = None
    tool_use: ToolUseDelta | None = None
    reasoning_content: ReasoningContent | None = None


class StreamPayload(_Wire):
    """Any ConverseStream event payload (messageStart, contentBlock*, messageStop,
    metadata) or exception payload (`message`)."""

    role: str | None = None
    content_block_index: int | None = None
    start: BlockStart | None = None
    delta: BlockDelta | None = None
    stop_reason: str | None = None
    usage: TokenUsage | None = None
    message: str | None = None


class ErrorBody(msgspec.Struct):
    message: str | None = None
    Message: str | None = None  # some Bedrock errors capitalize it


decode_response = msgspec.json.Decoder(ConverseResponse).decode
decode_payload = msgspec.json.Decoder(StreamPayload).decode
decode_error = msgspec.json.Decoder(ErrorBody).decode
encode = msgspec.json.Encoder().encode

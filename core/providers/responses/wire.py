"""The OpenAI Responses API (`POST /v1/responses`), as far as the translators read and write it.

Request Structs are decoded from the client's body (fields the gateway does not know are
skipped); answer Structs are what a translated provider's answer is written as, field for
field as OpenAI sends them (nulls included), so the `openai` SDK's `Response` and its stream
events parse them, and the guardrails' scanner of Responses events reads the same shapes.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.request import decode_body

# -- the request ------------------------------------------------------------------------


class InputContent(msgspec.Struct, omit_defaults=True):
    """A content part of an input message: input_text, input_image, input_file, output_text
    (an earlier assistant turn), refusal."""

    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None
    refusal: str | None = None


class InputItem(msgspec.Struct, omit_defaults=True):
    """Any input item: a message (`type` "message" or absent, with `role`), a function_call,
    a function_call_output, a reasoning item, an item_reference, ..."""

    type: str | None = None
    role: str | None = None
    content: str | list[InputContent] | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContent] | None = None


class FunctionTool(msgspec.Struct):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(msgspec.Struct):
    type: str  # "function" (others: hosted tools, allowed_tools, ...)
    name: str | None = None


class Reasoning(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class TextFormat(msgspec.Struct, omit_defaults=True):
    type: str  # text | json_object | json_schema
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, omit_defaults=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct, omit_defaults=True):
    model: str | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # Features that need state or services the gateway does not have for translated providers.
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    background: bool | None = None
    top_logprobs: int | None = None


_decode_request = msgspec.json.Decoder(ResponsesRequest).decode


def decode_responses(body: bytes) -> ResponsesRequest:
    """The client's Responses request. Raises GatewayError(400) naming the offending field."""
    return decode_body(_decode_request, body)


# -- the answer ---------------------------------------------------------------------------


class OutputText(msgspec.Struct):
    text: str
    type: str = "output_text"
    annotations: list[Any] = []
    logprobs: list[Any] = []


class MessageItem(msgspec.Struct, kw_only=True):
    id: str
    content: list[OutputText]
    status: str = "completed"
    type: str = "message"
    role: str = "assistant"


class FunctionCallItem(msgspec.Struct, kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"
    type: str = "function_call"


class SummaryText(msgspec.Struct):
    text: str
    type: str = "summary_text"


class ReasoningItem(msgspec.Struct, kw_only=True):
    id: str
    summary: list[SummaryText]
    type: str = "reasoning"


OutputItem = MessageItem | FunctionCallItem | ReasoningItem


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    reason: str  # max_output_tokens | content_filter


class ResponseError(msgspec.Struct):
    code: str
    message: str


class ReasoningOut(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class Response(msgspec.Struct, kw_only=True):
    """The `response` object: the non-stream body, and the snapshot stream events carry."""

    id: str
    created_at: int
    model: str
    status: str
    output: list[OutputItem]
    usage: ResponseUsage | None
    object: str = "response"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    reasoning: ReasoningOut = msgspec.field(default_factory=ReasoningOut)
    store: bool = False  # the gateway keeps no responses: nothing can be retrieved or continued
    temperature: float | None = None
    text: TextConfig = msgspec.field(default_factory=lambda: TextConfig(TextFormat("text")))
    tool_choice: str | NamedToolChoice = "auto"
    tools: list[FunctionTool] = []
    top_p: float | None = None
    truncation: str = "disabled"
    user: str | None = None
    metadata: dict[str, str] = {}


encode = msgspec.json.Encoder().encode

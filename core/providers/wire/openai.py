"""The OpenAI chat API, as far as the translators read and write it.

Request Structs are decoded from the client's body; every translator to a non-OpenAI
provider starts from `ChatRequest`. Fields the gateway does not know are ignored, as the
OpenAI API itself tolerates them poorly but clients do send vendor extensions.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from tollway.core.errors import GatewayError, bad_request
from tollway.core.request import StreamOptions, decode_body


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str
    detail: str | None = None


class ContentPart(msgspec.Struct, omit_defaults=True):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct):  # `type` is required on the wire: never omitted
    id: str
    function: FunctionCall
    type: str = "function"


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct):  # `type` is required on the wire: never omitted
    function: FunctionDef
    type: str = "function"


class ToolChoiceFunction(msgspec.Struct, omit_defaults=True):
    name: str


class NamedToolChoice(msgspec.Struct):  # `type` is required on the wire: never omitted
    function: ToolChoiceFunction
    type: str = "function"


class JSONSchemaFormat(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    schema: dict[str, Any] | None = None


class ResponseFormat(msgspec.Struct, omit_defaults=True):
    type: str
    json_schema: JSONSchemaFormat | None = None


class ChatRequest(msgspec.Struct, omit_defaults=True):
    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    n: int | None = None
    logprobs: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    reasoning_effort: str | None = None  # none | minimal | low | medium | high | xhigh

    @property
    def output_limit(self) -> int | None:
        """The client's cap on output tokens, None when it set none. A 0 (or a negative) is a cap
        too: it goes to the provider, whose own error answers it (issue 17, fidelity)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


# -- the answer side, as read by translators that serve other client APIs from OpenAI ---

class PromptDetailsIn(msgspec.Struct):
    cached_tokens: int | None = None


class CompletionDetailsIn(msgspec.Struct):
    reasoning_tokens: int | None = None


class UsageIn(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None
    prompt_tokens_details: PromptDetailsIn | None = None
    completion_tokens_details: CompletionDetailsIn | None = None


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


def _reasoning_text(reasoning_content: str | None, reasoning: object) -> str | None:
    """A model's reasoning beside its answer: vLLM and DeepSeek name it `reasoning_content`;
    vLLM since 0.11 names it `reasoning` (the old name kept "for now", its docs say), as do
    other servers. A `reasoning` of another shape than text is not reasoning text."""
    return reasoning_content or (reasoning if isinstance(reasoning, str) else None)


class ChoiceDelta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None  # OpenAI's: a declined request's text comes here, not in `content`
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDeltaIn] | None = None
    reasoning: object = None  # (any type decodes: see `_reasoning_text`)

    @property
    def reasoning_text(self) -> str | None:
        return _reasoning_text(self.reasoning_content, self.reasoning)


class ToolCallDeltaIn(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class ChunkChoice(msgspec.Struct):
    delta: ChoiceDelta | None = None
    finish_reason: str | None = None
    index: int = 0
    # vLLM's: the stop string (or token id) it stopped on; OpenAI has none. Any type decodes: an
    # informational field some other server shapes otherwise must not fail the whole answer.
    stop_reason: object = None


class StreamError(msgspec.Struct):
    """The `error` object an OpenAI-compatible upstream (vLLM, OpenAI) may send mid-stream."""

    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class ChatChunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: UsageIn | None = None
    error: StreamError | str | None = None


class AnswerMessage(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None  # OpenAI's: a declined request's text comes here, not in `content`
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning: object = None  # (any type decodes: see `_reasoning_text`)

    @property
    def reasoning_text(self) -> str | None:
        return _reasoning_text(self.reasoning_content, self.reasoning)


class AnswerChoice(msgspec.Struct):
    message: AnswerMessage
    finish_reason: str | None = None
    index: int = 0
    # vLLM's: the stop string (or token id) it stopped on; OpenAI has none. Any type decodes: an
    # informational field some other server shapes otherwise must not fail the whole answer.
    stop_reason: object = None


class ChatCompletion(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[AnswerChoice] = []
    usage: UsageIn | None = None


decode_completion = msgspec.json.Decoder(ChatCompletion).decode
decode_chunk = msgspec.json.Decoder(ChatChunk).decode
encode = msgspec.json.Encoder().encode
_decode_chat = msgspec.json.Decoder(ChatRequest).decode


def decode_chat(body: bytes) -> ChatRequest:
    """The client's chat request. Raises GatewayError(400) naming the offending field."""
    return decode_body(_decode_chat, body)


# What goes between a message's pieces of text when a provider takes them as one string (an
# OpenAI message's text parts, an Anthropic message's text blocks, a Responses item's parts):
# they are separate pieces ("Hello" + "world" is not "Helloworld"), and a newline is what an
# OpenAI-compatible server (vLLM's chat templates) puts between the text parts of one message.
TEXT_JOINER = "\n"


def join_texts(texts: Iterable[str | None]) -> str:
    """Pieces of one message's text as one string (`TEXT_JOINER` between them; empty ones left out)."""
    return TEXT_JOINER.join(t for t in texts if t)


def text_of(content: str | list[ContentPart] | None) -> str:
    """The text of a message's content, its text parts joined (`join_texts`)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return join_texts(p.text for p in content if p.type == "text")


def unsupported(field: str, provider: str, why: str = "") -> GatewayError:
    """The 400 for a request feature this provider lacks, naming the field."""
    more = f" {why}" if why else ""
    return bad_request(f"'{field}' is not supported for models served by {provider}.{more}", param=field)


def reject_unsupported(req: ChatRequest, provider: str, allow_json_mode: bool = False) -> None:
    """Refuse features no translator can honour. Raises GatewayError(400) naming the field."""
    if req.n not in (None, 1):
        raise unsupported("n", provider, "Send one request per choice.")
    if req.logprobs:
        raise unsupported("logprobs", provider)
    if req.presence_penalty:
        raise unsupported("presence_penalty", provider)
    if req.frequency_penalty:
        raise unsupported("frequency_penalty", provider)
    fmt = req.response_format
    if fmt is not None and fmt.type != "text" and not allow_json_mode:
        raise unsupported("response_format", provider)


# `reasoning_effort` -> the thinking-token budget of providers that take a budget (Anthropic's
# extended thinking, Gemini's thinkingBudget); 1024 is Anthropic's smallest budget.
REASONING_BUDGETS = {"none": 0, "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}


def reasoning_budget(effort: str | None, param: str = "reasoning_effort") -> int | None:
    """The thinking budget for `effort` (0: no thinking), or None when the client set none.
    Raises GatewayError(400) naming `param` for an effort OpenAI does not define."""
    if effort is None:
        return None
    budget = REASONING_BUDGETS.get(effort)
    if budget is None:
        raise bad_request(f"Unknown reasoning effort '{effort}'; use one of {', '.join(REASONING_BUDGETS)}.", param=param)
    return budget


class DataURL(msgspec.Struct):
    media_type: str
    data: str  # base64


def parse_data_url(url: str) -> DataURL | None:
    """`data:image/png;base64,AAAA` -> DataURL, or None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    media_type, _, encoding = head.partition(";")
    if not sep or encoding != "base64":
        return None
    return DataURL(media_type or "application/octet-stream", data)

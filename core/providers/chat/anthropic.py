"""OpenAI chat client API -> Anthropic Messages (`POST /v1/messages`).

Request: system/developer messages become `system`; consecutive same-role turns are merged
(Anthropic requires alternation); tool results (`role: tool`) become `tool_result` blocks of a
user turn; `max_tokens` is required upstream, so a default is sent when the client set none.
Response and stream: text, tool calls and thinking map back to OpenAI's message, and usage
counts cache reads and writes into the prompt (Anthropic's `input_tokens` excludes them).

Theory of operation of the stream: Anthropic sends `message_start`, then per content block
`content_block_start` / `content_block_delta`* / `content_block_stop`, then `message_delta`
(stop reason, cumulative output tokens) and `message_stop`, with `ping`s anywhere and `error`
possible at any point. Each event maps to at most one `chat.completion.chunk` through the
`_HANDLERS` table; `message_stop` closes with the usage chunk (if asked) and `[DONE]`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

import msgspec

from tollway.core.errors import GatewayError, bad_request, upstream_ended_early, upstream_no_message_start
from tollway.core.providers.base import CallContext, SSEStreamTranslator, UpstreamCall
from tollway.core.providers.chat.output import ChunkWriter, FunctionOut, ToolCallOut, completion_body
from tollway.core.providers.upstream_errors import provider_error
from tollway.core.providers.wire import anthropic as wire
from tollway.core.providers.wire.openai import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    decode_chat,
    parse_data_url,
    reasoning_budget,
    reject_unsupported,
    text_of,
)
from tollway.ext.usage import Usage

DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024
DEFAULT_VERSION = "2023-06-01"
PROVIDER = "Anthropic"

STOP_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
# Anthropic's error `type` -> the HTTP status it stands for (for errors inside a stream).
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "overloaded_error": 529,
}

_decode_json = msgspec.json.decode


class OpenAIToAnthropic:
    """Adapter: OpenAI chat completions served by Anthropic's Messages API."""

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_chat(ctx.body)
        body = wire.encode(to_messages_request(req, ctx.upstream_model))
        return UpstreamCall("POST", messages_url(ctx), anthropic_headers(ctx), body, bool(req.stream))

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        msg = wire.decode_response(body)
        usage = usage_of(msg.usage) if reported(msg.usage) else None  # None: the proxy counts the text
        text = "".join(b.text or "" for b in msg.content if b.type == "text")
        reasoning = "".join(b.thinking or "" for b in msg.content if b.type == "thinking")
        calls = [ToolCallOut(b.id or "", FunctionOut(b.name or "", _encode_input(b.input)))
                 for b in msg.content if b.type == "tool_use"]
        reason = STOP_REASONS.get(msg.stop_reason or "")
        return completion_body(msg.id, ctx.now, msg.model, text, calls, reason, usage, reasoning), usage

    def stream(self, ctx: CallContext) -> AnthropicStreamToOpenAI:
        return AnthropicStreamToOpenAI(ctx)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return anthropic_error(ctx, status, headers, body)


def messages_url(ctx: CallContext, path: str = "/v1/messages") -> str:
    return (ctx.provider.base_url or "https://api.anthropic.com").rstrip("/") + path


def anthropic_headers(ctx: CallContext) -> list[tuple[str, str]]:
    p = ctx.provider
    headers = [("content-type", "application/json"), ("anthropic-version", p.api_version or DEFAULT_VERSION)]
    if p.api_key:
        headers.append(("x-api-key", p.api_key))
    headers.extend((p.headers or {}).items())
    return headers


def anthropic_error(ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
    """The client error for an Anthropic error response (`{"type":"error","error":{...}}`)."""
    try:
        message: str | None = wire.decode_error(body).error.message
    except msgspec.MsgspecError:
        message = None
    return provider_error(ctx.provider, status, headers, message)


def usage_of(u: wire.AnthropicUsage) -> Usage:
    """Anthropic usage in the gateway's terms: prompt tokens include cache reads and writes."""
    read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    prompt, completion = (u.input_tokens or 0) + read + write, u.output_tokens or 0
    return Usage(prompt, completion, prompt + completion, cached_tokens=read, cache_write_tokens=write)


def reported(u: wire.AnthropicUsage | None) -> TypeGuard[wire.AnthropicUsage]:
    """Whether `u` holds any count. An answer whose upstream reported none (no usage, or an empty
    one, as some Anthropic-compatible servers send) must be counted from its text, not billed 0."""
    return u is not None and any(getattr(u, field) is not None for field in u.__struct_fields__)


def merge_usage(into: wire.AnthropicUsage, u: wire.AnthropicUsage) -> None:
    """The counts `u` reports, over those `into` has: message_delta's are cumulative, newest wins."""
    for field in u.__struct_fields__:
        value = getattr(u, field)
        if value is not None:
            setattr(into, field, value)


def _encode_input(value: dict[str, Any] | None) -> str:
    return wire.encode(value or {}).decode()


# -- request translation ---------------------------------------------------------------

def to_messages_request(req: ChatRequest, model: str) -> wire.MessagesRequest:
    """The Anthropic request for an OpenAI chat request. Raises GatewayError(400)."""
    reject_unsupported(req, PROVIDER)
    system, messages = convert_messages(req.messages)
    max_tokens, thinking = thinking_of(req, PROVIDER)
    return wire.MessagesRequest(
        model=model, messages=messages, max_tokens=max_tokens, thinking=thinking,
        system=system or None, temperature=req.temperature, top_p=req.top_p,
        stop_sequences=req.stop_list, stream=req.stream or None, tools=_tools(req),
        tool_choice=_tool_choice(req), metadata=wire.Metadata(req.user) if req.user else None,
    )


def thinking_of(req: ChatRequest, provider: str) -> tuple[int, wire.Thinking | None]:
    """(max_tokens, extended thinking) for the request's output limit and `reasoning_effort`.

    Claude counts thinking inside `max_tokens` and needs the budget below it: without a client
    limit the budget is added to the default one; with a limit too small to think in (Claude's
    smallest budget is 1024), the request is refused rather than silently answered without
    reasoning. While a tool loop is open (the last assistant turn called tools), Claude wants
    that turn to start with its signed thinking block, which OpenAI's messages cannot carry
    back: thinking stays off for that request, rather than every tool result being refused.
    Raises GatewayError(400)."""
    budget = reasoning_budget(req.reasoning_effort)
    if not budget or _in_tool_loop(req.messages):
        return _or_default(req.output_limit, DEFAULT_MAX_TOKENS), None
    max_tokens = _or_default(req.output_limit, budget + DEFAULT_MAX_TOKENS)
    budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        raise bad_request(f"Reasoning on {provider} needs an output limit above {MIN_THINKING_BUDGET} tokens "
                          "(its thinking counts in it).", param="max_tokens")
    return max_tokens, wire.Thinking("enabled", budget)


def _or_default(limit: int | None, default: int) -> int:
    """The client's output cap as it is (a 0 reaches Claude, which refuses it), else `default`:
    Claude needs one."""
    return default if limit is None else limit


def _in_tool_loop(messages: list[ChatMessage]) -> bool:
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    return last is not None and bool(last.tool_calls)


def convert_messages(messages: list[ChatMessage]) -> tuple[list[wire.Block], list[wire.Message]]:
    """(system blocks, alternating turns) for OpenAI `messages`. Raises GatewayError(400)."""
    system: list[wire.Block] = []
    turns: list[wire.Message] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            text = text_of(m.content)
            if has_text(text):
                system.append(wire.Block("text", text=text))
            continue
        role, blocks = _turn(m, i)
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty assistant turn says nothing
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)  # type: ignore[union-attr]
        else:
            turns.append(wire.Message(role, blocks))
    return system, turns


def _turn(m: ChatMessage, i: int) -> tuple[str, list[wire.Block]]:
    builder = _TURNS.get(m.role)
    if builder is None:
        raise bad_request(f"Unknown role '{m.role}' in messages[{i}].", param=f"messages[{i}].role")
    return builder(m, i)


def has_text(text: str | None) -> bool:
    """Whether `text` can be sent as a text block: OpenAI takes empty text, but Anthropic (and
    Bedrock's Converse) refuse an empty or whitespace-only block with a 400, so such text is
    left out; it says nothing to the model."""
    return bool(text and text.strip())


def is_blank_text(p: ContentPart) -> bool:
    return p.type == "text" and not has_text(p.text)


def _user_turn(m: ChatMessage, i: int) -> tuple[str, list[wire.Block]]:
    if isinstance(m.content, str):
        return "user", [wire.Block("text", text=m.content)] if has_text(m.content) else []
    return "user", [_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(m.content or []) if not is_blank_text(p)]


def _part(p: ContentPart, where: str) -> wire.Block:
    if p.type == "text":
        return wire.Block("text", text=p.text or "")
    if p.type == "image_url" and p.image_url is not None:
        data = parse_data_url(p.image_url.url)
        if data is not None:
            return wire.Block("image", source=wire.ImageSource("base64", data.media_type, data.data))
        return wire.Block("image", source=wire.ImageSource("url", url=p.image_url.url))
    raise bad_request(f"Content part type '{p.type}' is not supported for models served by {PROVIDER}.", param=where)


def _assistant_turn(m: ChatMessage, i: int) -> tuple[str, list[wire.Block]]:
    text = text_of(m.content)
    blocks = [wire.Block("text", text=text)] if has_text(text) else []
    for j, call in enumerate(m.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}].function.arguments"
        blocks.append(wire.Block("tool_use", id=call.id, name=call.function.name,
                                 input=tool_arguments(call.function.arguments, where)))
    return "assistant", blocks


def _tool_turn(m: ChatMessage, i: int) -> tuple[str, list[wire.Block]]:
    if not m.tool_call_id:
        raise bad_request(f"messages[{i}] has role 'tool' but no tool_call_id.", param=f"messages[{i}].tool_call_id")
    return "user", [wire.Block("tool_result", tool_use_id=m.tool_call_id, content=text_of(m.content))]


_TURNS: dict[str, Callable[[ChatMessage, int], tuple[str, list[wire.Block]]]] = {
    "user": _user_turn, "assistant": _assistant_turn, "tool": _tool_turn, "function": _tool_turn,
}


def tool_arguments(arguments: str, where: str) -> dict[str, Any]:
    """A tool call's JSON arguments as an object. Raises GatewayError(400) naming `where`."""
    if not arguments.strip():
        return {}
    try:
        value = _decode_json(arguments)
    except msgspec.DecodeError:
        raise bad_request(f"'{where}' is not valid JSON.", param=where) from None
    if not isinstance(value, dict):
        raise bad_request(f"'{where}' must be a JSON object.", param=where)
    return value


def _tools(req: ChatRequest) -> list[wire.Tool] | None:
    if not req.tools:
        return None
    return [wire.Tool(t.function.name, t.function.parameters or {"type": "object", "properties": {}},
                      t.function.description) for t in req.tools]


def _tool_choice(req: ChatRequest) -> wire.ToolChoice | None:
    choice = req.tool_choice
    no_parallel = True if req.parallel_tool_calls is False else None
    if choice is None or not req.tools:
        return wire.ToolChoice("auto", disable_parallel_tool_use=True) if no_parallel and req.tools else None
    if isinstance(choice, str):
        kind = TOOL_CHOICES.get(choice)
        if kind is None:
            raise bad_request(f"Unknown tool_choice '{choice}'.", param="tool_choice")
        return wire.ToolChoice(kind, disable_parallel_tool_use=no_parallel if kind != "none" else None)
    return wire.ToolChoice("tool", choice.function.name, no_parallel)


# -- stream translation ----------------------------------------------------------------

class AnthropicStreamToOpenAI(SSEStreamTranslator[wire.StreamEvent]):
    """Anthropic SSE events in, OpenAI `chat.completion.chunk` events out."""

    def __init__(self, ctx: CallContext) -> None:
        super().__init__(wire.decode_event)
        self._ctx = ctx
        self._writer: ChunkWriter | None = None
        self._usage = wire.AnthropicUsage()  # what message_start and message_delta reported so far
        self._reported = False  # any count at all: else usage stays None and the proxy counts the text
        self._done = False

    def _complete(self) -> bool:
        return self._done  # message_stop seen; it also sent the closing chunks

    def _early_end(self) -> GatewayError:
        return upstream_ended_early(self._ctx.provider.name)

    def _on(self, event: wire.StreamEvent) -> bytes:
        if self._done:  # after message_stop (and our [DONE]) a broken upstream's events are ignored:
            return b""   # the answer the client has is whole and billed; nothing may follow [DONE]
        handler = _HANDLERS.get(event.type)
        return handler(self, event) if handler else b""  # ping and future event types

    def _start(self, e: wire.StreamEvent) -> bytes:
        msg = e.message
        model = msg.model if msg else self._ctx.upstream_model
        self._writer = ChunkWriter(msg.id if msg else "chatcmpl-anthropic", self._ctx.now, model,
                                   self._ctx.head.wants_usage_chunk)
        if msg:
            self._merge_usage(msg.usage)
        return self._writer.role()

    def _block_start(self, e: wire.StreamEvent) -> bytes:
        block, w = e.content_block, self._require_writer()
        if block is None:
            return b""
        if block.type == "tool_use":
            return w.tool_start(block.id or "", block.name or "", _encode_input(block.input) if block.input else "")
        if block.type == "text" and block.text:
            self._text.append(block.text)
            return w.text(block.text)
        return b""

    def _block_delta(self, e: wire.StreamEvent) -> bytes:
        d, w = e.delta, self._require_writer()
        if d is None:
            return b""
        if d.text is not None:
            self._text.append(d.text)
            return w.text(d.text)
        if d.partial_json is not None:  # tool input and thinking are output tokens too
            self._text.append(d.partial_json)
            return w.tool_arguments(d.partial_json)
        if d.thinking is not None:
            self._text.append(d.thinking)
            return w.reasoning(d.thinking)
        return b""  # signature_delta and future delta types

    def _message_delta(self, e: wire.StreamEvent) -> bytes:
        self._merge_usage(e.usage)
        reason = e.delta.stop_reason if e.delta else None
        return self._require_writer().finish(STOP_REASONS.get(reason or "")) if reason else b""

    def _stop(self, e: wire.StreamEvent) -> bytes:
        self._done = True
        self.usage = usage_of(self._usage) if self._reported else None
        return self._require_writer().end(self.usage)

    def _error(self, e: wire.StreamEvent) -> bytes:
        detail = e.error or wire.ErrorDetail()
        raise provider_error(self._ctx.provider, ERROR_STATUS.get(detail.type, 500), [], detail.message)

    def _merge_usage(self, u: wire.AnthropicUsage | None) -> None:
        if reported(u):
            merge_usage(self._usage, u)
            self._reported = True

    def _require_writer(self) -> ChunkWriter:
        if self._writer is None:
            raise upstream_no_message_start()
        return self._writer


_HANDLERS: dict[str, Callable[[AnthropicStreamToOpenAI, wire.StreamEvent], bytes]] = {
    "message_start": AnthropicStreamToOpenAI._start,
    "content_block_start": AnthropicStreamToOpenAI._block_start,
    "content_block_delta": AnthropicStreamToOpenAI._block_delta,
    "message_delta": AnthropicStreamToOpenAI._message_delta,
    "message_stop": AnthropicStreamToOpenAI._stop,
    "error": AnthropicStreamToOpenAI._error,
}

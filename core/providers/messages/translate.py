"""Anthropic Messages client API (`/anthropic/v1/messages`) -> any OpenAI-chat backend.

Clients written for Anthropic's SDK (coding agents, for one) can use every model the gateway
serves: the request is translated to an OpenAI chat request, and that request is handed to the
provider's own chat adapter (`inner`), so the same class serves OpenAI-compatible pools,
Azure, Bedrock and Gemini. The answer goes the other way: the inner adapter yields OpenAI
chat bytes, which are translated into an Anthropic `message` or its SSE events.

Theory of operation of the stream: OpenAI chunks carry deltas without block boundaries, so
`ChatStreamToAnthropic` keeps which block is open (text, thinking or one tool call) and
emits `content_block_stop`/`content_block_start` whenever the kind of delta changes. The
closing `message_delta` waits for `[DONE]` (or the end of the stream) because usage arrives
in the chunk after the one carrying `finish_reason`.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.errors import GatewayError, bad_request, upstream_failed_mid_stream, upstream_no_answer
from tollway.core.providers.base import (
    Adapter,
    CallContext,
    ClientAPI,
    SSEStreamTranslator,
    UpstreamCall,
)
from tollway.core.providers.chained import ChainedStream
from tollway.core.providers.messages.errors import error_event
from tollway.core.providers.registry import adapter_for
from tollway.core.providers.wire import anthropic as wire
from tollway.core.providers.wire import openai as oa
from tollway.core.request import RequestHead, StreamOptions, decode_body
from tollway.ext.usage import Usage

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}

_decode_json = msgspec.json.decode


class AnthropicOverChat:
    """Adapter: Anthropic Messages requests served through the provider's chat adapter."""

    inner_schema = "openai"  # whose (chat, schema) adapter carries the request

    def inner(self) -> Adapter:
        adapter = adapter_for(ClientAPI.CHAT, self.inner_schema)
        assert adapter is not None  # every inner_schema has a chat adapter (registry.ADAPTERS)
        return adapter

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_messages(ctx.body)
        chat = to_chat_request(req, ctx.upstream_model)
        return self.inner().build(_chat_ctx(ctx, oa.encode(chat), chat))

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        chat_body, usage = self.inner().response(_chat_ctx(ctx), status, body)
        return wire.encode(to_message(oa.decode_completion(chat_body), usage)), usage

    def stream(self, ctx: CallContext) -> ChainedStream:
        return ChainedStream(self.inner().stream(_chat_ctx(ctx)), ChatStreamToAnthropic(ctx.upstream_model))

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return self.inner().error(_chat_ctx(ctx), status, headers, body)


class AnthropicToAzure(AnthropicOverChat):
    inner_schema = "azure_openai"


class AnthropicToBedrock(AnthropicOverChat):
    inner_schema = "bedrock"


class AnthropicToVertex(AnthropicOverChat):
    inner_schema = "vertex"


class AnthropicToGemini(AnthropicOverChat):
    inner_schema = "gemini"


def _chat_ctx(ctx: CallContext, body: bytes = b"", chat: oa.ChatRequest | None = None) -> CallContext:
    """The context the inner chat adapter sees: an OpenAI body that always asks for usage."""
    head = RequestHead(model=ctx.upstream_model, stream=ctx.head.stream, max_tokens=ctx.head.max_tokens,
                       stream_options=StreamOptions(include_usage=True))
    return CallContext(ClientAPI.CHAT, body, head, ctx.upstream_model, ctx.provider, ctx.now)


def decode_messages(body: bytes) -> wire.MessagesRequest:
    """The client's Anthropic request. Raises GatewayError(400) naming the field."""
    return decode_body(wire.decode_request, body)


# -- request: Anthropic -> OpenAI chat ---------------------------------------------------

def to_chat_request(req: wire.MessagesRequest, model: str) -> oa.ChatRequest:
    """The OpenAI chat request for an Anthropic request. Raises GatewayError(400)."""
    if req.top_k is not None:
        raise bad_request("'top_k' is not supported for models served by an OpenAI-compatible provider.", param="top_k")
    messages = [oa.ChatMessage("system", _text(req.system))] if req.system else []
    for i, m in enumerate(req.messages):
        messages.extend(_messages(m, i))
    stream = bool(req.stream)
    return oa.ChatRequest(
        messages=messages, model=model, max_tokens=req.max_tokens, temperature=req.temperature,
        top_p=req.top_p, stop=req.stop_sequences, stream=stream or None,
        stream_options=StreamOptions(include_usage=True) if stream else None,
        tools=_tools(req), tool_choice=_tool_choice(req.tool_choice),
        parallel_tool_calls=False if req.tool_choice and req.tool_choice.disable_parallel_tool_use else None,
        user=req.metadata.user_id if req.metadata else None,
    )


def _text(content: str | list[wire.Block] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(b.text or "" for b in content if b.type == "text")


def _messages(m: wire.Message, i: int) -> list[oa.ChatMessage]:
    if isinstance(m.content, str):
        return [oa.ChatMessage(m.role, m.content)]
    if m.role == "assistant":
        return [_assistant(m.content)]
    return _user(m.content, i)


def _assistant(blocks: list[wire.Block]) -> oa.ChatMessage:
    calls = [oa.ToolCall(b.id or "", oa.FunctionCall(b.name or "", wire.encode(b.input or {}).decode()))
             for b in blocks if b.type == "tool_use"]
    return oa.ChatMessage("assistant", _text(blocks) or None, tool_calls=calls or None)


def _user(blocks: list[wire.Block], i: int) -> list[oa.ChatMessage]:
    """Tool results become `tool` messages, placed before the rest of the user turn as
    OpenAI requires them right after the assistant's tool calls."""
    out = [oa.ChatMessage("tool", _text(b.content), tool_call_id=b.tool_use_id)
           for b in blocks if b.type == "tool_result"]
    found = (_part(b, f"messages[{i}].content[{j}]") for j, b in enumerate(blocks) if b.type != "tool_result")
    parts = [p for p in found if p is not None]
    if parts:
        only_text = all(p.type == "text" for p in parts)
        out.append(oa.ChatMessage("user", "".join(p.text or "" for p in parts) if only_text else parts))
    return out


def _part(b: wire.Block, where: str) -> oa.ContentPart | None:
    if b.type == "text":
        return oa.ContentPart("text", text=b.text or "")
    if b.type == "image" and b.source is not None:
        url = b.source.url if b.source.type == "url" else f"data:{b.source.media_type};base64,{b.source.data}"
        return oa.ContentPart("image_url", image_url=oa.ImageURL(url or ""))
    if b.type in ("thinking", "redacted_thinking"):
        return None  # the model's own earlier reasoning: nothing the backend can take back
    raise bad_request(f"Content block type '{b.type}' is not supported by this model's provider.", param=where)


def _tools(req: wire.MessagesRequest) -> list[oa.Tool] | None:
    if not req.tools:
        return None
    out = []
    for i, t in enumerate(req.tools):
        if t.input_schema is None:
            raise bad_request(f"Server tool '{t.name}' is not supported by this model's provider.", param=f"tools[{i}]")
        out.append(oa.Tool(oa.FunctionDef(t.name, t.description, t.input_schema)))
    return out


def _tool_choice(choice: wire.ToolChoice | None) -> str | oa.NamedToolChoice | None:
    if choice is None:
        return None
    if choice.type == "tool":
        return oa.NamedToolChoice(oa.ToolChoiceFunction(choice.name or ""))
    mapped = TOOL_CHOICES.get(choice.type)
    if mapped is None:
        raise bad_request(f"Unknown tool_choice type '{choice.type}'.", param="tool_choice.type")
    return mapped


# -- response: OpenAI chat completion -> Anthropic message --------------------------------

def anthropic_usage(u: Usage | None) -> wire.AnthropicUsage:
    """Anthropic's usage object: `input_tokens` excludes cache reads and writes."""
    if u is None:
        return wire.AnthropicUsage(0, 0)
    fresh = max(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens)
    return wire.AnthropicUsage(fresh, u.completion_tokens, u.cache_write_tokens, u.cached_tokens)


def to_message(done: oa.ChatCompletion, usage: Usage | None) -> wire.MessageResponse:
    choice = done.choices[0] if done.choices else oa.AnswerChoice(oa.AnswerMessage())
    m = choice.message
    blocks = [wire.Block("thinking", thinking=m.reasoning_content, signature="")] if m.reasoning_content else []
    if m.content:
        blocks.append(wire.Block("text", text=m.content))
    for call in m.tool_calls or []:
        args = _arguments(call.function.arguments)
        blocks.append(wire.Block("tool_use", id=call.id, name=call.function.name, input=args))
    reason = "tool_use" if m.tool_calls else STOP_REASONS.get(choice.finish_reason or "stop", "end_turn")
    return wire.MessageResponse(_message_id(done.id), done.model, blocks, reason, None, anthropic_usage(usage))


def _arguments(text: str) -> dict[str, Any]:
    """Tool arguments as an object; a model's malformed JSON is kept, not dropped."""
    try:
        value = _decode_json(text) if text.strip() else {}
    except msgspec.DecodeError:
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"_value": value}


def _message_id(openai_id: str) -> str:
    return openai_id if openai_id.startswith("msg_") else "msg_" + (openai_id.removeprefix("chatcmpl-") or "tollway")


# -- stream: OpenAI chunks -> Anthropic events --------------------------------------------

def _stream_error(error: oa.StreamError | str) -> GatewayError:
    """The client's error for an upstream's in-stream error object (scrubbed by the proxy)."""
    return upstream_failed_mid_stream(error if isinstance(error, str) else error.message)


def sse(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + wire.encode(payload) + b"\n\n"


class ChatStreamToAnthropic(SSEStreamTranslator[oa.ChatChunk]):
    """OpenAI `chat.completion.chunk` SSE in, Anthropic Messages SSE events out. It keeps no
    text of its own: `ChainedStream` counts the inner translator's."""

    def __init__(self, model: str) -> None:
        super().__init__(oa.decode_chunk)
        self._model = model
        self._started = self._closed = False
        self._block = -1  # index of the open content block, -1 if none
        self._kind = ""  # "text" | "thinking" | "tool_use"
        self._reason: str | None = None
        self._tools = False

    def error_event(self, err: GatewayError) -> bytes:
        """A failure mid-stream (the inner provider's, or the gateway's) as Anthropic's error event."""
        return error_event(err)

    def _complete(self) -> bool:
        return self._started  # [DONE] is optional: the end of the stream closes an answer that began

    def _early_end(self) -> GatewayError:
        return upstream_no_answer()

    def _undecodable(self, data: bytes) -> bytes:
        if data == b"[DONE]":  # OpenAI's end of stream, the one event that is not JSON
            return self._close()
        return super()._undecodable(data)

    def _on(self, chunk: oa.ChatChunk) -> bytes:
        if chunk.error is not None:  # the upstream failed mid-stream: end with Anthropic's error event
            raise _stream_error(chunk.error)
        out = b"" if self._started else self._start(chunk)
        if chunk.usage is not None:
            u = chunk.usage
            cached = u.prompt_tokens_details.cached_tokens or 0 if u.prompt_tokens_details else 0
            self.usage = Usage(u.prompt_tokens, u.completion_tokens, u.prompt_tokens + u.completion_tokens, cached)
        for choice in chunk.choices[:1]:
            out += self._delta(choice.delta) if choice.delta else b""
            self._reason = choice.finish_reason or self._reason
        return out

    def _start(self, chunk: oa.ChatChunk) -> bytes:
        self._started = True
        message = wire.MessageResponse(_message_id(chunk.id), chunk.model or self._model, [], None, None,
                                       wire.AnthropicUsage(0, 0))
        return sse("message_start", {"type": "message_start", "message": message})

    def _delta(self, d: oa.ChoiceDelta) -> bytes:
        out = b""
        if d.reasoning_content:
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._block_delta({"type": "thinking_delta", "thinking": d.reasoning_content})
        if d.content:
            out += self._open("text", {"type": "text", "text": ""})
            out += self._block_delta({"type": "text_delta", "text": d.content})
        for call in d.tool_calls or []:
            fn = call.function or oa.FunctionDelta()
            if call.id:
                self._tools = True
                out += self._open("tool_use", {"type": "tool_use", "id": call.id, "name": fn.name or "", "input": {}},
                                  new=True)
            if fn.arguments:
                out += self._block_delta({"type": "input_json_delta", "partial_json": fn.arguments})
        return out

    def _open(self, kind: str, block: dict[str, Any], new: bool = False) -> bytes:
        if self._kind == kind and not new:
            return b""
        out = self._stop_block()
        self._block += 1
        self._kind = kind
        return out + sse("content_block_start", {"type": "content_block_start", "index": self._block,
                                                 "content_block": block})

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self._block, "delta": delta})

    def _stop_block(self) -> bytes:
        if not self._kind:
            return b""
        self._kind = ""
        return sse("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _close(self) -> bytes:
        if self._closed or not self._started:
            return b""
        self._closed = True
        reason = "tool_use" if self._tools else STOP_REASONS.get(self._reason or "stop", "end_turn")
        usage = anthropic_usage(self.usage)
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": usage}
        return self._stop_block() + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})

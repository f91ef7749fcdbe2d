"""Anthropic Messages client API (`/anthropic/v1/messages`) -> any OpenAI-chat backend.

Clients written for Anthropic's SDK (coding agents, for one) can use every model the gateway
serves: the request is translated to an OpenAI chat request, and that request is handed to the
provider's own chat adapter (`inner`), so the same class serves OpenAI-compatible pools,
Azure, Bedrock and Gemini. The answer goes the other way: the inner adapter yields OpenAI
chat bytes, which are translated into an Anthropic `message` or its SSE events.

Theory of operation of the stream: OpenAI chunks carry deltas without block boundaries, so
`ChatStreamToAnthropic` keeps which block is open (text, thinking or one tool call) and
emits `content_block_stop`/`content_block_start` whenever the kind of delta changes. Each
OpenAI tool call (its `index`) gets its own tool_use block; since Anthropic blocks go out one
at a time, a call whose deltas arrive while another call's block is open is held (see
`_ToolCall`). A call's arguments go out in one input_json_delta when its block ends, checked:
Anthropic validates tool input before streaming it (only its fine-grained-tool-streaming beta
does not), and the anthropic SDK parses every input_json_delta and raises on bad JSON, losing
the whole answer; arguments that are no JSON object go as the JSON answer keeps them
(`_arguments`), so a stream and an answer say the same. A client that asked Anthropic for
unchecked tool input (its fine-grained-tool-streaming beta) gets each piece as it comes.
The closing `message_delta` waits for `[DONE]` (or the end of the stream) because usage
arrives in the chunk after the one carrying `finish_reason`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from tollway.core.errors import (
    GatewayError,
    bad_request,
    upstream_failed_mid_stream,
    upstream_no_answer,
    upstream_tool_call_ended,
)
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
# Finishes of a generation the server gave up on (vLLM's engine says "abort" when it aborts a
# request: shutdown, scale-down, a pause; SGLang too; "error" when it failed). The answer is not
# whole, and Anthropic ends a failed generation with an error, never a stop reason.
FAILED_FINISHES = frozenset({"abort", "error"})

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
        return wire.encode(to_message(oa.decode_completion(chat_body), usage, ctx.body)), usage

    def stream(self, ctx: CallContext) -> ChainedStream:
        inner = self.inner().stream(_chat_ctx(ctx))
        outer = ChatStreamToAnthropic(ctx.upstream_model, lambda: inner.usage, ctx.body,
                                      unchecked_tool_input=wants_unchecked_tool_input(ctx.passed_headers))
        return ChainedStream(inner, outer)

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


# The beta with which Anthropic streams tool input "without buffering or JSON validation" (its
# docs); any dated version of it.
FINE_GRAINED_TOOL_STREAMING = "fine-grained-tool-streaming-"


def wants_unchecked_tool_input(passed_headers: tuple[tuple[str, str], ...]) -> bool:
    """True if the client's `anthropic-beta` header names the fine-grained-tool-streaming beta."""
    return any(name.lower() == "anthropic-beta" and any(beta.strip().startswith(FINE_GRAINED_TOOL_STREAMING)
                                                        for beta in value.split(","))
               for name, value in passed_headers)


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
    # Anthropic's required max_tokens is OpenAI's max_completion_tokens: OpenAI's reasoning models
    # (o-series, gpt-5; on Azure too) refuse the deprecated max_tokens with a 400, and the other
    # inner adapters (Bedrock, Gemini, Vertex) read either (ChatRequest.output_limit).
    return oa.ChatRequest(
        messages=messages, model=model, max_completion_tokens=req.max_tokens, temperature=req.temperature,
        top_p=req.top_p, stop=req.stop_sequences, stream=stream or None,
        stream_options=StreamOptions(include_usage=True) if stream else None,
        tools=_tools(req), tool_choice=_tool_choice(req.tool_choice),
        parallel_tool_calls=False if req.tool_choice and req.tool_choice.disable_parallel_tool_use else None,
        user=req.metadata.user_id if req.metadata else None,
    )


def _text(content: str | list[wire.Block] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return oa.join_texts(b.text for b in content if b.type == "text")


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
    OpenAI requires them right after the assistant's tool calls. A tool message takes text
    only, so a result's images open the user message that follows (`_tool_result`)."""
    out: list[oa.ChatMessage] = []
    parts: list[oa.ContentPart] = []
    for j, b in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        if b.type == "tool_result":
            message, images = _tool_result(b, where)
            out.append(message)
            parts.extend(images)
        elif (part := _part(b, where)) is not None:
            parts.append(part)
    if parts:
        only_text = all(p.type == "text" for p in parts)
        out.append(oa.ChatMessage("user", oa.join_texts(p.text for p in parts) if only_text else parts))
    return out


# What a tool message says of its result when the model must know more than its text: OpenAI's
# has neither an error flag nor room for images (its content is text), so the text says it.
TOOL_ERROR_PREFIX = "Error: "
TOOL_IMAGES_ONLY = "(The result is the images in the next message.)"


def _tool_result(b: wire.Block, where: str) -> tuple[oa.ChatMessage, list[oa.ContentPart]]:
    """A tool_result as OpenAI's `tool` message, and the parts its images become in the user
    message after it (led by a line naming the call, so the model knows whose they are).
    `is_error` is said in the text: dropping it would tell the model the call succeeded."""
    if b.content is None or isinstance(b.content, str):
        text, images = b.content or "", []
    else:
        found = [_part(c, f"{where}.content[{k}]") for k, c in enumerate(b.content)]
        text = oa.join_texts(p.text for p in found if p is not None and p.type == "text")
        images = [p for p in found if p is not None and p.type == "image_url"]
    if images:
        text = text or TOOL_IMAGES_ONLY  # (an empty tool message is left out by some backends' translators)
        images.insert(0, oa.ContentPart("text", text=f"The result of tool call {b.tool_use_id} holds these images:"))
    if b.is_error:
        text = TOOL_ERROR_PREFIX + text
    return oa.ChatMessage("tool", text, tool_call_id=b.tool_use_id), images


def _part(b: wire.Block, where: str) -> oa.ContentPart | None:
    if b.type == "text":
        return oa.ContentPart("text", text=b.text or "")
    if b.type == "image" and b.source is not None:
        return oa.ContentPart("image_url", image_url=oa.ImageURL(_image_url(b.source, where)))
    if b.type in ("thinking", "redacted_thinking"):
        return None  # the model's own earlier reasoning: nothing the backend can take back
    # (Anthropic's error envelope has no `param`: the message itself says where.)
    raise bad_request(f"Content block type '{b.type}' ({where}) is not supported by this model's provider.", param=where)


def _image_url(source: wire.ImageSource, where: str) -> str:
    """An image source as OpenAI's `image_url`: a link as it is, inline bytes as a data URL.
    Raises GatewayError(400) naming the block for any other source: a Files API `file_id`
    names a file in Anthropic's store, which no other provider can read."""
    if source.type == "url" and source.url:
        return source.url
    if source.type == "base64" and source.media_type and source.data:
        return f"data:{source.media_type};base64,{source.data}"
    if source.type == "file":
        raise bad_request(f"The image at {where} is a file of Anthropic's Files API (source type 'file'), which this "
                          "model's provider cannot read: send it as 'base64' or 'url'.", param=f"{where}.source")
    raise bad_request(f"The image at {where} needs a source of type 'base64' (with 'media_type' and 'data') or "
                      f"'url' (with 'url'); got type '{source.type}'.", param=f"{where}.source")


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


def to_message(done: oa.ChatCompletion, usage: Usage | None, request: bytes = b"{}") -> wire.MessageResponse:
    """The Anthropic message for an OpenAI answer; `request` is the client's body (for `stop_of`)."""
    choice = done.choices[0] if done.choices else oa.AnswerChoice(oa.AnswerMessage())
    if choice.finish_reason in FAILED_FINISHES:
        raise _gave_up(choice.finish_reason)
    m = choice.message
    reasoning = m.reasoning_text
    blocks = [wire.Block("thinking", thinking=reasoning, signature="")] if reasoning else []
    if text := oa.join_texts((m.content, m.refusal)):
        blocks.append(wire.Block("text", text=text))
    for call in m.tool_calls or []:
        args = _arguments(call.function.arguments)
        blocks.append(wire.Block("tool_use", id=call.id, name=call.function.name, input=args))
    reason, sequence = refused(stop_of(choice.finish_reason, choice.stop_reason, bool(m.tool_calls), request),
                               bool(m.refusal))
    return wire.MessageResponse(_message_id(done.id), done.model, blocks, reason, sequence, anthropic_usage(usage))


class _StopSequences(msgspec.Struct):
    stop_sequences: list[str] | None = None


_decode_stop_sequences = msgspec.json.Decoder(_StopSequences).decode


def stop_of(finish: str | None, matched: object, tool_use: bool, request: bytes) -> tuple[str, str | None]:
    """Anthropic's `stop_reason` and `stop_sequence` for an OpenAI finish.

    OpenAI says `finish_reason: "stop"` both when the model ended on its own and when it met
    one of the `stop` strings, and the answer leaves the string out, so which one it was cannot
    be known: such an answer is `end_turn` with no `stop_sequence` (never a guess). vLLM says
    which, in `stop_reason` (the string; a token id is an int, and None is the model's own end):
    that is `stop_sequence` when it is one of the client's (`request`, its Anthropic body, is
    read for them only then)."""
    # A cut-off or filtered answer says so even when it holds tool calls: their input may be
    # incomplete, and `tool_use` would have the client run them (Anthropic says `max_tokens` then).
    if tool_use and finish not in ("length", "content_filter"):
        return "tool_use", None
    if finish == "stop" and isinstance(matched, str):
        if matched in (_decode_stop_sequences(request).stop_sequences or ()):
            return "stop_sequence", matched
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def refused(stop: tuple[str, str | None], refusal: bool) -> tuple[str, str | None]:
    """`stop`, or Anthropic's `refusal` when the model declined: OpenAI says so only by the
    answer's `refusal` text, its finish being a plain "stop" (a cut-off answer stays `max_tokens`)."""
    return ("refusal", None) if refusal and stop[0] == "end_turn" else stop


def _arguments(text: str) -> dict[str, Any]:
    """Tool arguments as an object; a model's malformed JSON is kept, not dropped."""
    try:
        value = _decode_json(text) if text.strip() else {}
    except msgspec.DecodeError:
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"_value": value}


def _input_json(arguments: str) -> str:
    """A call's whole arguments as the tool input to stream: as sent when they are a JSON
    object, else as `_arguments` keeps them, so the client's parser never meets bad JSON."""
    try:
        if isinstance(_decode_json(arguments), dict):
            return arguments
    except (msgspec.DecodeError, RecursionError):  # (nested past msgspec's depth limit: not an input either)
        return wire.encode({"_raw_arguments": arguments}).decode()
    return wire.encode(_arguments(arguments)).decode()


def _message_id(openai_id: str) -> str:
    return openai_id if openai_id.startswith("msg_") else "msg_" + (openai_id.removeprefix("chatcmpl-") or "tollway")


# -- stream: OpenAI chunks -> Anthropic events --------------------------------------------

def _gave_up(finish: str) -> GatewayError:
    return upstream_failed_mid_stream(f"The upstream provider stopped generating this answer (it finished with "
                                      f"'{finish}'): the answer is incomplete. Retry the request.")


def _stream_error(error: oa.StreamError | str) -> GatewayError:
    """The client's error for an upstream's in-stream error object (scrubbed by the proxy)."""
    return upstream_failed_mid_stream(error if isinstance(error, str) else error.message)


def sse(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + wire.encode(payload) + b"\n\n"


_JSON_MARKS = re.compile(r'[{}\[\]"\\]')  # the characters that move a JSON scan's state


class _ToolCall:
    """One OpenAI tool call (one `index`) on its way to its own Anthropic tool_use block.

    Anthropic blocks go out one at a time (start, deltas, stop), but an OpenAI stream may
    interleave the deltas of several calls. The call whose block is open gathers its arguments
    (sent, checked, when its block ends); another call's block opens once the open one may end: when
    that one's arguments are a whole JSON object (nothing but blanks can follow), or at the end.
    """

    __slots__ = ("block", "named", "held", "state", "whole", "_depth", "_in_string", "_escaped")

    def __init__(self, call_id: str, name: str, named: str | None = None) -> None:
        self.block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        self.named = named  # the id the upstream gave it (None: it gave none, `call_id` is made up)
        self.held: list[str] = []  # arguments not sent yet (no more than the answer, which the proxy caps)
        self.state = "held"  # "held" | "open" | "ended"
        self.whole = False  # its arguments so far close the JSON value they opened
        self._depth = 0
        self._in_string = self._escaped = False

    def add(self, arguments: str) -> None:
        """Follow the brackets of one more piece of arguments (strings skipped): one pass over
        each piece, however many pieces come."""
        skip = 0 if self._escaped else -1  # a backslash that ended the last piece escapes this one's first character
        for mark in _JSON_MARKS.finditer(arguments):
            i, c = mark.start(), mark.group()
            if self._in_string:
                if i == skip:
                    continue
                if c == "\\":
                    skip = i + 1
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                self.whole = self.whole or self._depth == 0
        self._escaped = self._in_string and skip == len(arguments)


def _no_usage() -> Usage | None:
    return None


class ChatStreamToAnthropic(SSEStreamTranslator[oa.ChatChunk]):
    """OpenAI `chat.completion.chunk` SSE in, Anthropic Messages SSE events out. It keeps no
    text of its own: `ChainedStream` counts the inner translator's.

    The closing usage is `upstream_usage()`, the inner translator's, when it has one: an OpenAI
    usage chunk has no field for cache writes, so what it carries would fold them into
    `input_tokens`. What the chunks say is the fallback (an OpenAI-compatible upstream's)."""

    def __init__(self, model: str, upstream_usage: Callable[[], Usage | None] = _no_usage,
                 request: bytes = b"{}", *, unchecked_tool_input: bool = False) -> None:
        super().__init__(oa.decode_chunk)
        self._unchecked = unchecked_tool_input  # tool input as it comes (the fine-grained beta), not checked whole
        self._model = model
        self._upstream_usage = upstream_usage
        self._request = request  # the client's body: its stop_sequences, read only if a stop string is named
        self._matched: object = None  # vLLM's stop_reason (stop_of)
        self._message_id = ""
        self._started = self._closed = False
        self._block = -1  # index of the open content block, -1 if none
        self._kind = ""  # "text" | "thinking" | "tool_use"
        self._reason: str | None = None
        self._refused = False  # some of the answer came as OpenAI's `refusal` (stop_reason `refusal`)
        self._calls: dict[int, _ToolCall] = {}  # the call at each OpenAI tool-call index now
        self._all: list[_ToolCall] = []  # every call, in the order they came
        self._open_call: _ToolCall | None = None  # the call whose block is open

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
            if choice.finish_reason in FAILED_FINISHES:  # (what came before it stays with the client)
                raise _gave_up(choice.finish_reason)
            out += self._delta(choice.delta) if choice.delta else b""
            self._reason = choice.finish_reason or self._reason
            self._matched = choice.stop_reason if choice.stop_reason is not None else self._matched
        return out

    def _start(self, chunk: oa.ChatChunk) -> bytes:
        self._started = True
        self._message_id = _message_id(chunk.id)
        message = wire.MessageResponse(self._message_id, chunk.model or self._model, [], None, None,
                                       wire.AnthropicUsage(0, 0))
        return sse("message_start", {"type": "message_start", "message": message})

    def _delta(self, d: oa.ChoiceDelta) -> bytes:
        out = b""
        if reasoning := d.reasoning_text:
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._block_delta({"type": "thinking_delta", "thinking": reasoning})
        for text in (d.content, d.refusal):  # (a refusal's text is the answer's text: to_message)
            if text:
                out += self._open("text", {"type": "text", "text": ""})
                out += self._block_delta({"type": "text_delta", "text": text})
        self._refused = self._refused or bool(d.refusal)
        for call in d.tool_calls or []:
            out += self._tool_delta(call)
        return out

    def _tool_delta(self, call: oa.ToolCallDeltaIn) -> bytes:
        """One delta of the call at `call.index`: the first opens the call (its id and name; an id
        repeated later is the same call), its arguments are held until its block ends."""
        fn = call.function or oa.FunctionDelta()
        arguments = fn.arguments or ""
        tool = self._calls.get(call.index)
        # A new id where another call was is a new call: some OpenAI-compatible servers leave
        # `index` out (0) or repeat it on whole calls, one after the other.
        if tool is None or (call.id and tool.named and call.id != tool.named):
            # (a call without an id still needs one: the client answers it by id)
            call_id = call.id or f"{self._message_id.replace('msg_', 'toolu_', 1)}_{len(self._all)}"
            tool = self._calls[call.index] = _ToolCall(call_id, fn.name or "", call.id)
            self._all.append(tool)
        if tool.state == "ended":
            if arguments.strip():  # (blanks after a whole object change nothing)
                raise upstream_tool_call_ended(call.index)
            return b""
        tool.add(arguments)
        if tool is self._open_call and self._unchecked:
            return self._block_delta({"type": "input_json_delta", "partial_json": arguments}) if arguments else b""
        tool.held.append(arguments)
        if tool is self._open_call:
            return b""
        if self._open_call is None or self._open_call.whole:
            return self._open_tool(tool)
        return b""

    def _open_tool(self, tool: _ToolCall) -> bytes:
        """End the open block and open `tool`'s (its arguments go when it ends, `_stop_block`, or
        now when they go unchecked)."""
        out = self._stop_block() + self._start_block("tool_use", tool.block)
        tool.state, self._open_call = "open", tool
        if not self._unchecked:
            return out
        held = "".join(tool.held)
        tool.held.clear()
        return out + (self._block_delta({"type": "input_json_delta", "partial_json": held}) if held else b"")

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        if self._kind == kind:
            return b""
        return self._stop_block() + self._start_block(kind, block)

    def _start_block(self, kind: str, block: dict[str, Any]) -> bytes:
        self._block += 1
        self._kind = kind
        return sse("content_block_start", {"type": "content_block_start", "index": self._block, "content_block": block})

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self._block, "delta": delta})

    def _stop_block(self) -> bytes:
        if not self._kind:
            return b""
        self._kind = ""
        out = b""
        if self._open_call is not None:
            held = "".join(self._open_call.held)
            self._open_call.held.clear()
            self._open_call.state, self._open_call = "ended", None
            if held.strip():  # (none: the block's start already says `input: {}`)
                out = self._block_delta({"type": "input_json_delta", "partial_json": _input_json(held)})
        return out + sse("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _held_calls(self) -> bytes:
        """At the end: the block of every call still held, whole, one after the other."""
        return b"".join([self._open_tool(tool) + self._stop_block() for tool in self._all
                         if tool.state == "held"])

    def _close(self) -> bytes:
        if self._closed or not self._started:
            return b""
        self._closed = True
        reason, sequence = refused(stop_of(self._reason, self._matched, bool(self._calls), self._request),
                                   self._refused)
        usage = anthropic_usage(self._upstream_usage() or self.usage)
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        out = self._stop_block() + self._held_calls()
        return out + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})

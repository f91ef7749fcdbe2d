"""OpenAI chat client API -> AWS Bedrock Converse (`/model/{id}/converse[-stream]`).

The model id is percent-encoded into the path (ids such as `anthropic.claude-3-5-sonnet-
20240620-v1:0` carry a colon). The request is signed afterwards by the gateway's SigV4
credential (service `bedrock`), or carries a Bedrock API key as a bearer token.

Theory of operation of the stream: `/converse-stream` answers with AWS eventstream frames
(prelude with lengths and a CRC32, typed headers, JSON payload, message CRC32).
`EventStreamFrames` reassembles frames from chunks split anywhere and has botocore check both CRCs; the
frame's `:message-type` says event or exception and `:event-type` names the event, which
`_HANDLERS` maps to at most one OpenAI chunk. Usage comes in the final `metadata` event,
after `messageStop`, so `[DONE]` is sent only then (or at the end of the stream).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import msgspec

from tollway.core.errors import GatewayError, bad_request, upstream_ended_early, upstream_malformed_event
from tollway.core.providers.base import CallContext, UpstreamCall
from tollway.core.providers.chat.anthropic import has_text, is_blank_text, thinking_of, tool_arguments
from tollway.core.providers.chat.output import ChunkWriter, FunctionOut, ToolCallOut, completion_body, completion_id
from tollway.core.providers.upstream_errors import provider_error
from tollway.core.providers.wire import anthropic as anthropic_wire
from tollway.core.providers.wire import bedrock as wire
from tollway.core.providers.wire.eventstream import EventStreamFrames
from tollway.core.providers.wire.openai import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    ToolCall,
    decode_chat,
    parse_data_url,
    reasoning_budget,
    reject_unsupported,
    text_of,
    unsupported,
)
from tollway.ext.usage import Usage

PROVIDER = "Bedrock"
EVENTSTREAM = "application/vnd.amazon.eventstream"
STOP_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
# An exception frame's `:exception-type` -> the HTTP status Bedrock gives it outside a stream.
EXCEPTION_STATUS = {
    "throttlingException": 429, "serviceUnavailableException": 503, "validationException": 400,
    "modelStreamErrorException": 502, "internalServerException": 500, "modelTimeoutException": 504,
    "accessDeniedException": 403,
}


def endpoint(ctx: CallContext) -> str:
    """The Bedrock runtime base URL: the configured one (a VPC endpoint), else the region's."""
    p = ctx.provider
    return (p.base_url or f"https://bedrock-runtime.{p.region}.amazonaws.com").rstrip("/")


class OpenAIToBedrock:
    """Adapter: OpenAI chat completions served by Bedrock's Converse API."""

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_chat(ctx.body)
        stream = bool(req.stream)
        url = f"{endpoint(ctx)}/model/{quote(ctx.upstream_model, safe='')}/{'converse-stream' if stream else 'converse'}"
        headers = [("content-type", "application/json"), ("accept", EVENTSTREAM if stream else "application/json")]
        if ctx.provider.api_key:  # a Bedrock API key; otherwise SigV4 signs the call later
            headers.append(("authorization", "Bearer " + ctx.provider.api_key))
        return UpstreamCall("POST", url, headers, wire.encode(to_converse(req, ctx.upstream_model)), stream)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        done = wire.decode_response(body)
        blocks = done.output.message.content if done.output.message else []
        text = "".join(b.text for b in blocks if b.text is not None)
        reasoning = "".join(b.reasoning_content.reasoning_text.text or "" for b in blocks
                            if b.reasoning_content and b.reasoning_content.reasoning_text)
        calls = [ToolCallOut(b.tool_use.tool_use_id, FunctionOut(b.tool_use.name, wire.encode(b.tool_use.input or {}).decode()))
                 for b in blocks if b.tool_use is not None]
        usage = usage_of(done.usage) if done.usage else None
        reason = STOP_REASONS.get(done.stop_reason or "")
        body_out = completion_body(completion_id(ctx.body, ctx.now), ctx.now, ctx.upstream_model, text, calls, reason,
                                   usage, reasoning)
        return body_out, usage

    def stream(self, ctx: CallContext) -> BedrockStreamToOpenAI:
        return BedrockStreamToOpenAI(ctx)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        try:
            parsed = wire.decode_error(body)
            message = parsed.message or parsed.Message
        except msgspec.MsgspecError:
            message = None
        return provider_error(ctx.provider, status, headers, message)


def usage_of(u: wire.TokenUsage) -> Usage:
    """Bedrock usage: like Anthropic's, `inputTokens` excludes cache reads and writes."""
    read, write = u.cache_read_input_tokens or 0, u.cache_write_input_tokens or 0
    prompt = u.input_tokens + read + write
    return Usage(prompt, u.output_tokens, prompt + u.output_tokens, cached_tokens=read, cache_write_tokens=write)


# -- request translation ---------------------------------------------------------------

def to_converse(req: ChatRequest, model: str = "") -> wire.ConverseRequest:
    """The Converse request for an OpenAI chat request to Bedrock model `model`. Raises
    GatewayError(400)."""
    reject_unsupported(req, PROVIDER)
    system = _system(req.messages)
    # Converse refuses toolUse/toolResult blocks without a toolConfig (400 ValidationException),
    # which OpenAI accepts (a summary turn after an agent loop sends its history but no tools).
    # Without tools, or with tool_choice "none" (which Converse lacks: its tools are left out),
    # the history's calls and results go as text, so the model can call none.
    history = _ToolHistoryAsText() if not req.tools or req.tool_choice == "none" else None
    turns: list[wire.Message] = []
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            continue
        role, blocks = _turn(m, i, history)
        if not blocks:
            continue
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)  # Converse requires alternating roles
        else:
            turns.append(wire.Message(role, blocks))
    max_tokens, thinking = _thinking(req, model)
    config = wire.InferenceConfig(max_tokens, req.temperature, req.top_p, req.stop_list)
    return wire.ConverseRequest(turns, system or None, config if config != wire.InferenceConfig() else None,
                                _tool_config(req), {"thinking": thinking} if thinking else None)


def _system(messages: list[ChatMessage]) -> list[wire.SystemBlock]:
    texts = (text_of(m.content) for m in messages if m.role in ("system", "developer"))
    return [wire.SystemBlock(text) for text in texts if has_text(text)]


def _thinking(req: ChatRequest, model: str) -> tuple[int | None, anthropic_wire.Thinking | None]:
    """(maxTokens, Claude's `thinking` field) for `reasoning_effort`. Converse has no reasoning
    setting of its own: Claude on Bedrock takes Anthropic's `thinking` through
    additionalModelRequestFields, with the same budget rules; other Bedrock models have no
    budget this gateway can set, so asking for one is a 400 rather than silently ignored."""
    if not reasoning_budget(req.reasoning_effort):
        return req.output_limit, None
    if "anthropic." not in model and "claude" not in model:
        raise unsupported("reasoning_effort", f"{PROVIDER} model '{model}'", "Only Claude models on Bedrock take it.")
    return thinking_of(req, PROVIDER)


def _turn(m: ChatMessage, i: int, history: _ToolHistoryAsText | None) -> tuple[str, list[wire.ContentBlock]]:
    """(role, blocks) of message `i`; its tool calls and results as text when `history` is given."""
    if m.role == "user":
        if isinstance(m.content, str):
            return "user", [wire.ContentBlock(text=m.content)] if has_text(m.content) else []
        return "user", [_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(m.content or [])
                        if not is_blank_text(p)]
    if m.role == "assistant":
        text = text_of(m.content)
        blocks = [wire.ContentBlock(text=text)] if has_text(text) else []
        for j, call in enumerate(m.tool_calls or []):
            args = tool_arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            blocks.append(history.call(call, args) if history is not None
                          else wire.ContentBlock(tool_use=wire.ToolUseBlock(call.id, call.function.name, args)))
        return "assistant", blocks
    if m.role in ("tool", "function"):
        if not m.tool_call_id:
            raise bad_request(f"messages[{i}] has role 'tool' but no tool_call_id.", param=f"messages[{i}].tool_call_id")
        if history is not None:
            return "user", history.result(m, m.tool_call_id, i)
        result = wire.ToolResultBlock(m.tool_call_id, [wire.ToolResultContent(text=text_of(m.content))])
        return "user", [wire.ContentBlock(tool_result=result)]
    raise bad_request(f"Unknown role '{m.role}' in messages[{i}].", param=f"messages[{i}].role")


class _ToolHistoryAsText:
    """A request's tool calls and tool results as text blocks, for a request without tools.

    Short, fixed wording, so the same history is always the same prompt: `Tool call c1:
    get_weather({"city":"Paris"})` (the arguments as compact JSON) and `Tool result for c1
    (get_weather): 18C` (the tool's name when an earlier call gave it). A result's images
    follow its text as image blocks, which a user turn may hold."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # tool call id -> tool name, from the calls seen so far

    def call(self, call: ToolCall, args: dict[str, Any]) -> wire.ContentBlock:
        self._names[call.id] = call.function.name
        return wire.ContentBlock(text=f"Tool call {call.id}: {call.function.name}({wire.encode(args).decode()})")

    def result(self, m: ChatMessage, call_id: str, i: int) -> list[wire.ContentBlock]:
        name = self._names.get(call_id) or m.name
        head = f"Tool result for {call_id} ({name}):" if name else f"Tool result for {call_id}:"
        text = text_of(m.content)
        blocks = [wire.ContentBlock(text=f"{head} {text}" if has_text(text) else head)]
        if isinstance(m.content, list):
            blocks += [_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(m.content) if p.type == "image_url"]
        return blocks


def _part(p: ContentPart, where: str) -> wire.ContentBlock:
    if p.type == "text":
        return wire.ContentBlock(text=p.text or "")
    if p.type == "image_url" and p.image_url is not None:
        data = parse_data_url(p.image_url.url)
        fmt = IMAGE_FORMATS.get(data.media_type) if data else None
        if data is None or fmt is None:
            raise bad_request(f"{PROVIDER} takes images only inline, as data:image/(png|jpeg|gif|webp);base64 URLs.",
                              param=where)
        return wire.ContentBlock(image=wire.ImageBlock(fmt, wire.ImageSource(data.data)))
    raise bad_request(f"Content part type '{p.type}' is not supported for models served by {PROVIDER}.", param=where)


def _tool_config(req: ChatRequest) -> wire.ToolConfig | None:
    """Tools and the choice among them. Converse has no "none": the tools are left out instead
    (and a tool history goes as text: see to_converse)."""
    if not req.tools or req.tool_choice == "none":
        return None
    # An empty description (which OpenAI takes) is left out: Converse requires at least 1 character.
    tools = [wire.Tool(wire.ToolSpec(t.function.name, wire.InputSchema(t.function.parameters or {"type": "object"}),
                                     t.function.description or None)) for t in req.tools]
    return wire.ToolConfig(tools, _tool_choice(req.tool_choice))


def _tool_choice(choice: Any) -> wire.ToolChoice | None:
    if choice is None or choice in ("auto", "none"):
        return wire.ToolChoice(auto={}) if choice == "auto" else None
    if choice == "required":
        return wire.ToolChoice(any={})
    if isinstance(choice, str):
        raise bad_request(f"Unknown tool_choice '{choice}'.", param="tool_choice")
    return wire.ToolChoice(tool=wire.SpecificTool(choice.function.name))


# -- stream translation ----------------------------------------------------------------

class BedrockStreamToOpenAI:
    """AWS eventstream frames in, OpenAI `chat.completion.chunk` events out."""

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._frames = EventStreamFrames(ctx.provider.name)
        self._writer = ChunkWriter(completion_id(ctx.body, ctx.now), ctx.now, ctx.upstream_model,
                                   ctx.head.wants_usage_chunk)
        self._text: list[str] = []
        self._stopped = self._ended = False
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        return b"".join([self._on(frame.headers, frame.payload) for frame in self._frames.feed(chunk)])

    def flush(self) -> bytes:
        if not self._stopped:
            raise upstream_ended_early(self._ctx.provider.name)
        return self._end()

    def streamed_text(self) -> str:
        return "".join(self._text)

    def _on(self, headers: dict[str, str], payload: bytes) -> bytes:
        if self._ended:  # after the metadata (and our [DONE]) a broken upstream's frames are ignored:
            return b""   # the answer the client has is whole and billed; nothing may follow [DONE]
        kind = headers.get(":message-type", "event")
        if kind != "event":
            self._raise(headers, payload)
        handler = _HANDLERS.get(headers.get(":event-type", ""))
        if handler is None:  # an event type added after this was written: skipped unread (its payload's
            return b""       # shape is its own; held to the known events' fields it would end the answer)
        try:
            event = wire.decode_payload(payload)
        except msgspec.MsgspecError:
            raise upstream_malformed_event() from None
        return handler(self, event)

    def _raise(self, headers: dict[str, str], payload: bytes) -> None:
        name = headers.get(":exception-type") or headers.get(":error-code") or "internalServerException"
        try:
            message = wire.decode_payload(payload).message or headers.get(":error-message")
        except msgspec.MsgspecError:
            message = headers.get(":error-message")
        status = EXCEPTION_STATUS.get(name[:1].lower() + name[1:], 502)
        raise provider_error(self._ctx.provider, status, [], message or name)

    def _start(self, e: wire.StreamPayload) -> bytes:
        return self._writer.role()

    def _block_start(self, e: wire.StreamPayload) -> bytes:
        tool = e.start.tool_use if e.start else None
        return self._writer.tool_start(tool.tool_use_id, tool.name) if tool else b""

    def _block_delta(self, e: wire.StreamPayload) -> bytes:
        d = e.delta
        if d is None:
            return b""
        if d.text is not None:
            self._text.append(d.text)
            return self._writer.text(d.text)
        if d.tool_use is not None:  # tool input and reasoning are output tokens too: streamed_text()
            self._text.append(d.tool_use.input)  # counts them when no usage comes (a client gone, a drain)
            return self._writer.tool_arguments(d.tool_use.input)
        if d.reasoning_content is not None and d.reasoning_content.text:
            self._text.append(d.reasoning_content.text)
            return self._writer.reasoning(d.reasoning_content.text)
        return b""

    def _stop(self, e: wire.StreamPayload) -> bytes:
        self._stopped = True
        return self._writer.finish(STOP_REASONS.get(e.stop_reason or ""))

    def _metadata(self, e: wire.StreamPayload) -> bytes:
        if e.usage is not None:
            self.usage = usage_of(e.usage)
        return self._end()

    def _end(self) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        return self._writer.end(self.usage)


_HANDLERS: dict[str, Callable[[BedrockStreamToOpenAI, wire.StreamPayload], bytes]] = {
    "messageStart": BedrockStreamToOpenAI._start,
    "contentBlockStart": BedrockStreamToOpenAI._block_start,
    "contentBlockDelta": BedrockStreamToOpenAI._block_delta,
    "messageStop": BedrockStreamToOpenAI._stop,
    "metadata": BedrockStreamToOpenAI._metadata,
}

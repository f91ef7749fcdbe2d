"""Anthropic Messages client API -> Anthropic itself: a pass-through.

The client's body goes upstream as it is (only `model` is rewritten to the target's upstream
name); the gateway swaps the client's gateway key for its own `x-api-key`, and of the client's
headers only `anthropic-beta` goes along (it switches on beta features per request). Usage is
read on the way past: from the body, or from `message_start` and the cumulative
`message_delta` of a stream, whose bytes are forwarded untouched.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.errors import GatewayError, upstream_unfinished
from tollway.core.kernels import SSEEvent, SSEFramer
from tollway.core.providers.base import CallContext, ClientAPI, UpstreamCall
from tollway.core.providers.chat.anthropic import (
    anthropic_error,
    anthropic_headers,
    merge_usage,
    messages_url,
    reported,
    usage_of,
)
from tollway.core.providers.messages.errors import error_event
from tollway.core.providers.wire import anthropic as wire
from tollway.ext.usage import Usage

PATHS = {ClientAPI.MESSAGES: "/v1/messages", ClientAPI.COUNT_TOKENS: "/v1/messages/count_tokens"}

_decode_doc = msgspec.json.decode
_encode_doc = msgspec.json.encode


class _UsageOnly(msgspec.Struct):
    usage: wire.AnthropicUsage | None = None


_decode_usage = msgspec.json.Decoder(_UsageOnly).decode


class AnthropicNative:
    """Adapter: Anthropic Messages (and count_tokens) straight to Anthropic."""

    def build(self, ctx: CallContext) -> UpstreamCall:
        stream = ctx.head.wants_stream and ctx.api == ClientAPI.MESSAGES
        return UpstreamCall("POST", messages_url(ctx, PATHS[ctx.api]), _headers(ctx), _body(ctx), stream)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        """The body as it came, and its usage. Raises msgspec.DecodeError if it is not JSON (the
        proxy's 502 upstream_malformed): relaying a 200 no client can parse hides the fault."""
        try:
            found = _decode_usage(body).usage
        except msgspec.ValidationError:  # JSON, with a usage of another shape: the upstream's business
            return body, None
        if ctx.api != ClientAPI.MESSAGES:
            return body, None
        return body, usage_of(found) if reported(found) else None

    def stream(self, ctx: CallContext) -> AnthropicStreamRelay:
        return AnthropicStreamRelay()

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return anthropic_error(ctx, status, headers, body)


def _headers(ctx: CallContext) -> list[tuple[str, str]]:
    """The provider's headers plus the client's passed ones (`anthropic-beta`), unless the
    operator configured that header for the provider: then the config wins."""
    headers = anthropic_headers(ctx)
    configured = {k.lower() for k, _ in headers}
    return headers + [(k, v) for k, v in ctx.passed_headers if k.lower() not in configured]


def _body(ctx: CallContext) -> bytes:
    if ctx.upstream_model == ctx.head.model:
        return ctx.body
    doc: dict[str, Any] = _decode_doc(ctx.body)
    doc["model"] = ctx.upstream_model
    return _encode_doc(doc)


class AnthropicStreamRelay:
    """Forwards Anthropic SSE bytes as they are, noting usage and the generated text."""

    def __init__(self) -> None:
        self._framer = SSEFramer()
        self._usage = wire.AnthropicUsage()
        self._text: list[str] = []
        self._ended = False  # message_stop or error seen: the stream is complete
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._note(ev) for ev in self._framer.feed(chunk))

    def flush(self) -> bytes:
        """The last bytes; raises GatewayError(502) if the stream ended without Anthropic's
        `message_stop` (or its own `error` event), so a cut-off answer is not passed as whole."""
        out = b"".join(self._note(ev) for ev in self._framer.flush())
        if not self._ended:
            raise upstream_unfinished()
        return out

    def streamed_text(self) -> str:
        return "".join(self._text)

    def error_event(self, err: GatewayError) -> bytes:
        """A failure the gateway detected mid-stream, as the `event: error` Anthropic sends."""
        return error_event(err)

    def _note(self, ev: SSEEvent) -> bytes:
        kind = ev.event
        self._ended = self._ended or kind in (b"message_stop", b"error")
        if kind in (b"message_start", b"message_delta", b"content_block_delta") and ev.data:
            self._read(ev.data)
        return ev.raw

    def _read(self, data: bytes) -> None:
        try:
            event = wire.decode_event(data)
        except msgspec.MsgspecError:
            return  # forwarded as is; the client's SDK will judge it
        found = event.message.usage if event.message else event.usage
        if reported(found):  # else usage stays None, and the proxy counts the streamed text
            merge_usage(self._usage, found)
            self.usage = usage_of(self._usage)
        d = event.delta
        if d is not None:  # text, tool input and thinking: all output tokens, counted if no usage came
            self._text += [piece for piece in (d.text, d.partial_json, d.thinking) if piece]

"""OpenAI client API -> an OpenAI-compatible upstream (OpenAI, vLLM, KServe, Groq, ...).

The body passes through untouched, except for two rewrites the gateway needs: the public
model name becomes the target's upstream name, and streamed chat/completions ask the
upstream for `stream_options.include_usage` so every stream's usage is captured. When the
client did not ask for that usage chunk, the relay drops it again, so the client sees what
the provider would have sent it.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.accounting.stream_text import RESPONSES_TEXT_DELTAS
from tollway.core.config import Provider
from tollway.core.errors import GatewayError, upstream_auth_failed, upstream_error, upstream_unfinished
from tollway.core.kernels import OpenAIStreamRelay, SSEEvent, SSEFramer
from tollway.core.providers.base import CallContext, ClientAPI, StreamTranslator, UpstreamCall
from tollway.ext.sse import streamed_text as text_of_stream
from tollway.ext.usage import OpenAIUsage, Usage, from_openai, usage_of_json

PATHS = {
    ClientAPI.CHAT: "/chat/completions",
    ClientAPI.COMPLETIONS: "/completions",
    ClientAPI.EMBEDDINGS: "/embeddings",
    ClientAPI.RESPONSES: "/responses",
    ClientAPI.MODERATIONS: "/moderations",
    ClientAPI.IMAGES: "/images/generations",
    ClientAPI.IMAGE_EDITS: "/images/edits",
    ClientAPI.TRANSCRIPTIONS: "/audio/transcriptions",
    ClientAPI.TRANSLATIONS: "/audio/translations",
    ClientAPI.SPEECH: "/audio/speech",
    ClientAPI.RERANK: "/rerank",
}
_USAGE_STREAMS = (ClientAPI.CHAT, ClientAPI.COMPLETIONS)

_json_decode = msgspec.json.decode
_json_encode = msgspec.json.encode


class OpenAIAdapter:
    """Pass-through adapter for OpenAI-schema upstreams."""

    def build(self, ctx: CallContext) -> UpstreamCall:
        stream = ctx.head.wants_stream and ctx.api != ClientAPI.EMBEDDINGS
        return UpstreamCall("POST", self.url(ctx), self.headers(ctx.provider), self.body(ctx, stream), stream)

    def url(self, ctx: CallContext) -> str:
        return (ctx.provider.base_url or "").rstrip("/") + PATHS[ctx.api]

    def headers(self, provider: Provider) -> list[tuple[str, str]]:
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if provider.api_key:
            headers.append(("authorization", "Bearer " + provider.api_key))
        headers.extend((provider.headers or {}).items())
        return headers

    def body(self, ctx: CallContext, stream: bool) -> bytes:
        rename = ctx.upstream_model != ctx.head.model
        add_usage = stream and ctx.api in _USAGE_STREAMS and not ctx.head.wants_usage_chunk
        if not (rename or add_usage):
            return ctx.body  # the common case: forward the client's bytes as they are
        doc: dict[str, Any] = _json_decode(ctx.body)
        doc["model"] = ctx.upstream_model
        if add_usage:
            opts = doc.get("stream_options") or {}
            doc["stream_options"] = {**opts, "include_usage": True}
        return _json_encode(doc)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        """The body as it came, and its usage. Raises msgspec.DecodeError if it is not JSON:
        relaying a 200 that no client can parse would hide the upstream's fault."""
        return body, usage_of_json(body)

    def stream(self, ctx: CallContext) -> StreamTranslator:
        if ctx.api == ClientAPI.RESPONSES:
            return ResponsesStreamRelay()
        return ChatStreamRelay(drop_usage_chunk=not ctx.head.wants_usage_chunk)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return openai_error(ctx.provider, status, headers, body)


class _ErrorFields(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorFields | str | None = None


_decode_error = msgspec.json.Decoder(_ErrorEnvelope).decode
_PASS_HEADERS = ("retry-after", "retry-after-ms")


def openai_error(provider: Provider, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
    """Relay an OpenAI-shaped upstream error with its status (tollway.gateway.proxy scrubs every field).

    A 401/403 means the gateway's own upstream credential failed: the client cannot fix
    that, so it becomes a 502 that says so.
    """
    if status in (401, 403):
        return upstream_auth_failed(provider.name)
    fields = _parse_error(body)
    message = fields.message or f"The upstream provider '{provider.name}' answered HTTP {status}."
    kind = fields.type or ("invalid_request_error" if status < 500 else "api_error")
    code = str(fields.code) if fields.code is not None else None
    kept = [(k, v) for k, v in headers if k in _PASS_HEADERS]
    return upstream_error(status, message, kind, code, fields.param, kept)


def _parse_error(body: bytes) -> _ErrorFields:
    try:
        env = _decode_error(body)
    except msgspec.MsgspecError:
        return _ErrorFields()
    if isinstance(env.error, str):
        return _ErrorFields(message=env.error)
    return env.error or _ErrorFields()


class _ResponsesBody(msgspec.Struct):
    usage: OpenAIUsage | None = None


class _ResponsesEvent(msgspec.Struct):
    """What the relay reads of a Responses stream event; every other field is skipped unread."""

    type: str = ""
    delta: str | None = None
    response: _ResponsesBody | None = None


class _EventType(msgspec.Struct):
    type: str = ""


_decode_responses_event = msgspec.json.Decoder(_ResponsesEvent).decode
_decode_event_type = msgspec.json.Decoder(_EventType).decode
# The events that end a Responses stream. All but `error` carry the response with its usage: an
# answer cut at `max_output_tokens` (incomplete) or failing midway (failed) was generated, and is
# billed, all the same.
_ENDS = frozenset(("response.completed", "response.incomplete", "response.failed", "error"))


class ChatStreamRelay(OpenAIStreamRelay):
    """The chat/completions relay (the compiled kernel's `feed`, untouched) whose end says
    whether the answer came whole: a stream the upstream ended cleanly but early (no `[DONE]`,
    no finish chunk) raises GatewayError(502), which the proxy sends as the client API's
    error event, as every other relay does; otherwise the SDK would take the cut text for the
    whole answer."""

    _withheld = ""  # the text of an event the stream ended inside: neither sent nor billed

    def flush(self) -> bytes:
        out = super().flush()  # what is left: an event the stream ended inside, if any
        if not self.finished():
            # An SSE client drops an event that the stream ends inside; so does the error's
            # relay (it sends the error event instead), and the text is not billed either.
            self._withheld = text_of_stream(out) if out else ""
            raise upstream_unfinished()
        return out

    def streamed_text(self) -> str:
        text = super().streamed_text()
        return text[:len(text) - len(self._withheld)]


class ResponsesStreamRelay:
    """Relays a Responses API stream untouched, reading its usage from the event that ends it
    and keeping its generated text, which is counted when no usage came."""

    def __init__(self) -> None:
        self._framer = SSEFramer()
        self.usage: Usage | None = None
        self._text: list[str] = []  # the deltas' text: no larger than the stream, which the proxy caps
        self._events = 0  # relayed so far: the next sequence number, as upstreams number from 0
        self._ended = False  # one of _ENDS seen: the client knows how the answer ended

    def feed(self, chunk: bytes) -> bytes:
        return self._relay(self._framer.feed(chunk))

    def flush(self) -> bytes:
        """The last bytes; raises GatewayError(502) if the stream ended without one of _ENDS, so
        a cut-off answer does not pass as a whole one (the proxy sends it as `error_event`)."""
        out = self._relay(self._framer.flush())
        if not self._ended:
            raise upstream_unfinished()
        return out

    def streamed_text(self) -> str:
        return "".join(self._text)

    def error_event(self, err: GatewayError) -> bytes:
        """The Responses API's own stream error event (`type: error`; the SDK yields it as a
        ResponseErrorEvent), not chat's `data: {"error": ...}`. Its sequence number follows the
        upstream's last (an output guardrail that inserted events may have used it already)."""
        event = {"type": "error", "code": err.code, "message": err.message, "param": err.param,
                 "sequence_number": self._events}
        return b"event: error\ndata: " + _json_encode(event) + b"\n\n"

    def _relay(self, events: list[SSEEvent]) -> bytes:
        self._events += len(events)
        for ev in events:
            if ev.data:
                self._note(ev.event, ev.data)
        return b"".join(ev.raw for ev in events)

    def _note(self, name: bytes | None, data: bytes) -> None:
        try:
            ev = _decode_responses_event(data)
        except msgspec.MsgspecError:  # forwarded as it is (the client's SDK judges it); did it end the stream?
            self._ended = self._ended or _kind(name, data) in _ENDS
            return
        kind = ev.type or _named(name)
        if ev.delta and kind in RESPONSES_TEXT_DELTAS:  # (output tokens: counted when no usage came)
            self._text.append(ev.delta)
        elif kind in _ENDS:
            self._ended = True
            if ev.response and ev.response.usage:  # cached and reasoning tokens included, for the prices
                self.usage = from_openai(ev.response.usage)


def _kind(name: bytes | None, data: bytes) -> str:
    """The type of an event the relay could not read whole (a usage count as 3.0): from its data's
    `type` alone, or its `event:` line if the data is JSON without one. Whether it ends the stream
    must not depend on reading its usage; data that is no JSON object (cut off) ends nothing."""
    try:
        kind = _decode_event_type(data).type
    except msgspec.MsgspecError:
        return ""
    return kind or _named(name)


def _named(name: bytes | None) -> str:
    return name.decode("ascii", "replace") if name else ""

"""The one small interface every translation pair implements.

A *client API* is what the client speaks to the gateway (OpenAI chat, OpenAI embeddings,
Anthropic messages, ...). A provider *schema* is what the upstream speaks. For each
(client API, schema) pair there is one module with one `Adapter` class; the gateway finds it
in `tollway.core.providers.registry` and never branches on provider names.

An adapter is sans-IO: it turns the client's body into an `UpstreamCall` (method, URL, headers,
body), the upstream's bytes back into client bytes plus `Usage`, and upstream errors into
`GatewayError`s. Credentials that need I/O to obtain (SigV4, OAuth) are applied afterwards
by the gateway's credential object; static API keys are plain headers set here.

Stream translators whose upstream speaks SSE share `SSEStreamTranslator`: framing, the
per-chunk loop, the malformed-event error and the end-of-stream check live there once.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import msgspec

from tollway.core.config import Provider
from tollway.core.errors import GatewayError, upstream_malformed_event
from tollway.core.forms import Form
from tollway.core.kernels import SSEFramer
from tollway.core.request import RequestHead
from tollway.ext.usage import Usage

if TYPE_CHECKING:
    from tollway.ext.sse import SSEEvent


class ClientAPI:
    """Names of the client-facing APIs (the first half of a translation pair)."""

    CHAT = "chat"                 # POST /v1/chat/completions
    COMPLETIONS = "completions"   # POST /v1/completions
    EMBEDDINGS = "embeddings"     # POST /v1/embeddings
    RESPONSES = "responses"       # POST /v1/responses
    MESSAGES = "messages"         # POST /anthropic/v1/messages
    COUNT_TOKENS = "count_tokens"  # POST /anthropic/v1/messages/count_tokens
    MODERATIONS = "moderations"   # POST /v1/moderations
    IMAGES = "images"             # POST /v1/images/generations (JSON)
    IMAGE_EDITS = "image_edits"   # POST /v1/images/edits (multipart)
    TRANSCRIPTIONS = "transcriptions"  # POST /v1/audio/transcriptions (multipart)
    TRANSLATIONS = "translations"  # POST /v1/audio/translations (multipart)
    SPEECH = "speech"             # POST /v1/audio/speech (JSON in, audio bytes out)
    RERANK = "rerank"             # POST /v1/rerank (the Cohere/Jina shape vLLM serves)


class UpstreamCall(msgspec.Struct):
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    stream: bool = False  # the upstream will answer with a stream
    # The answer is relayed as the bytes it is, as they arrive, with the upstream's content type
    # (audio, a transcript, an SSE stream of media events): tollway.gateway.media_relay.
    media: bool = False


class CallContext(msgspec.Struct):
    """Everything an adapter needs to build one upstream call."""

    api: str
    body: bytes
    head: RequestHead
    upstream_model: str
    provider: Provider
    now: float = 0.0  # wall-clock seconds, for `created` fields (core never reads the clock)
    # Client headers the client API lets through to providers that understand them (Anthropic's
    # `anthropic-beta`); chosen at the gateway's boundary by name, never credentials.
    passed_headers: tuple[tuple[str, str], ...] = ()
    form: Form | None = None  # a multipart upload's fields and where they are in `body` (tollway.core.forms)


class StreamTranslator(Protocol):
    """Turns upstream stream bytes into client stream bytes, chunk by chunk."""

    usage: Usage | None

    def feed(self, chunk: bytes) -> bytes:
        """Client bytes for this upstream chunk (possibly empty). Raises GatewayError."""
        ...

    def flush(self) -> bytes:
        """Client bytes owed at the upstream's end of stream (e.g. a closing event)."""
        ...

    def streamed_text(self) -> str:
        """The generated text so far, for counting tokens when the upstream sent no usage."""
        ...

    # Optional: `error_event(err: GatewayError) -> bytes`, the client API's own stream error
    # event for a failure after the first byte. Without it the proxy sends OpenAI's
    # `data: {"error": ...}`; the Anthropic client API needs `event: error` instead.


Event = TypeVar("Event")  # what one upstream SSE event's data decodes to


class SSEStreamTranslator(Generic[Event]):
    """The skeleton of a `StreamTranslator` whose upstream speaks SSE with one JSON document per
    event: it owns the framer, decodes each event (a malformed one is the catalogue's 502) and
    hands it to `_on`, and at the upstream's end raises `_early_end()` unless `_complete()`.

    A subclass says only what is its own: the decoder it passes in, `_on`, `_complete`,
    `_early_end`, and `_close` if its stream owes closing bytes at the end.
    """

    def __init__(self, decode: Callable[[bytes], Event]) -> None:
        self._framer = SSEFramer()
        self._decode = decode
        self._text: list[str] = []  # the generated text, for streamed_text()
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:  # a chained translator is fed its inner one's output, often empty
            return b""
        return self._translate(self._framer.feed(chunk))

    def flush(self) -> bytes:
        out = self._translate(self._framer.flush())
        if not self._complete():
            raise self._early_end()  # a cut-off answer must not pass as a whole one
        return out + self._close()

    def streamed_text(self) -> str:
        return "".join(self._text)

    def _translate(self, events: list[SSEEvent]) -> bytes:
        # The hot path, once per upstream chunk: a plain loop (no generator) and locals for the
        # two calls each event makes, so the shared skeleton costs no more than the copies did.
        decode, on = self._decode, self._on
        out: list[bytes] = []
        for ev in events:
            data = ev.data
            if not data:
                continue
            try:
                event = decode(data)
            except msgspec.MsgspecError:
                out.append(self._undecodable(data))
                continue
            out.append(on(event))
        return b"".join(out)

    def _undecodable(self, data: bytes) -> bytes:
        """Client bytes for event data the decoder rejected: none, the upstream broke its schema.
        A subclass whose stream has a non-JSON sentinel (OpenAI's `[DONE]`) handles it here, off
        the per-event path."""
        raise upstream_malformed_event() from None

    def _on(self, event: Event) -> bytes:
        """Client bytes for one decoded upstream event."""
        raise NotImplementedError

    def _complete(self) -> bool:
        """Whether the stream, ending now, has said enough to be closed as a whole answer."""
        raise NotImplementedError

    def _early_end(self) -> GatewayError:
        """The catalogue's error for a stream that ended before `_complete()`."""
        raise NotImplementedError

    def _close(self) -> bytes:
        """Client bytes owed at a complete stream's end (none unless the subclass says so)."""
        return b""


class Adapter(Protocol):
    """One (client API, provider schema) translation pair."""

    def build(self, ctx: CallContext) -> UpstreamCall:
        """The upstream request for this client request. Raises GatewayError(400) if the
        request uses a feature the provider lacks, naming the field."""
        ...

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        """Client body and usage for a successful (2xx) non-stream upstream response."""
        ...

    def stream(self, ctx: CallContext) -> StreamTranslator:
        """A fresh translator for one streamed response."""
        ...

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        """The client-facing error for an upstream error response (status >= 400)."""
        ...

"""Two stream translators in series: the provider's stream to OpenAI chat chunks, then those
chunks to another client API's events. How every client API reaches every provider without a
translator per pair: Anthropic messages (messages/translate.py) and the Responses API
(responses/stream.py) go over the provider's chat translator."""
from __future__ import annotations

from typing import Protocol

from tollway.core.errors import GatewayError
from tollway.core.providers.base import StreamTranslator
from tollway.ext.usage import Usage


class FromChat(Protocol):
    """The outer translator: OpenAI chat chunks in, the client API's events out."""

    usage: Usage | None  # what it read in the chunks (the Responses one reads none: the inner's counts)

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def error_event(self, err: GatewayError) -> bytes:
        """A failure mid-stream (the provider's, or the gateway's) as the client API ends a stream."""
        ...


class ChainedStream:
    """`inner` (provider events -> chat chunks), then `outer` (chat chunks -> client events). The
    text streamed is counted by `inner`; usage is `inner`'s, else what `outer` read."""

    def __init__(self, inner: StreamTranslator, outer: FromChat) -> None:
        self._inner, self._outer = inner, outer

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage or self._outer.usage

    def feed(self, chunk: bytes) -> bytes:
        return self._outer.feed(self._inner.feed(chunk))

    def flush(self) -> bytes:
        return self._outer.feed(self._inner.flush()) + self._outer.flush()

    def streamed_text(self) -> str:
        return self._inner.streamed_text()

    def error_event(self, err: GatewayError) -> bytes:
        return self._outer.error_event(err)

"""The in-process transport of the `fake` provider.

It answers `UpstreamClient.request()` calls without a socket, with the OpenAI wire bytes that
`tollway.core.providers.fake` makes, so everything above the transport (adapters, stream relay,
usage capture, limits) runs exactly as it would against a real upstream.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import msgspec

from tollway.core.config import Timeouts
from tollway.core.providers import fake

_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream")]


class _Head(msgspec.Struct):
    model: str = "fake"
    stream: bool | None = None  # null: not a stream, as OpenAI reads it


_decode_head = msgspec.json.Decoder(_Head).decode


class FakeResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], chunks: list[bytes], delay: float) -> None:
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self._delay = delay
        self.waited = 0.0  # the pauses between chunks: the fake's "upstream" time

    encoded = False  # see tollway.gateway.upstream.client.UpstreamResponse

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    async def read(self, limit: int | None = None) -> bytes:
        return b"".join(self._chunks)  # the fake's answers are small and made here: no limit to hold

    async def read_prefix(self, limit: int) -> bytes:
        return b"".join(self._chunks)[:limit]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self._chunks):
            if self._delay and i:
                await asyncio.sleep(self._delay)
                self.waited += self._delay
            yield chunk

    def close(self) -> None:
        self._chunks = []


_BODIES: dict[str, Callable[[bytes, str, int], bytes]] = {
    "/chat/completions": fake.chat_completion,
    "/completions": fake.completion,
    "/embeddings": fake.embedding,
    "/responses": fake.response,
}
_STREAMS: dict[str, Callable[[bytes, str, int, int], list[bytes]]] = {
    "/chat/completions": fake.chat_chunks,
    "/responses": lambda body, model, now, _: fake.response_events(body, model, now),
}


# What the answer makers raise on a body of the wrong shape (`"messages": 5`, `"tools": [null]`):
# the gateway forwards such fields as they are, and a real upstream answers them with a 400.
_UNREADABLE = (msgspec.MsgspecError, TypeError, AttributeError, KeyError, IndexError, ValueError)


def _refusal(exc: Exception) -> bytes:
    message = f"The fake provider cannot read this request ({type(exc).__name__})."
    return msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                          "code": None}})


class FakeTransport:
    """Stands in for UpstreamClient for providers with `schema: fake`."""

    def __init__(self, chunks: int = 8, chunk_delay: float = 0.0) -> None:
        self._chunks = chunks
        self._delay = chunk_delay

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, timeouts: Timeouts,
                      extra_head: bytes = b"") -> FakeResponse:
        path = next((p for p in _BODIES if url.endswith(p)), None)
        if path is None:
            return FakeResponse(404, _JSON, [b'{"error":{"message":"unknown fake path","type":"invalid_request_error"}}'], 0)
        now = int(time.time())  # answers are stamped as OpenAI's are
        try:
            head = _decode_head(body)
            if head.stream and path in _STREAMS:
                return FakeResponse(200, _SSE, _STREAMS[path](body, head.model, now, self._chunks), self._delay)
            return FakeResponse(200, _JSON, [_BODIES[path](body, head.model, now)], 0)
        except _UNREADABLE as exc:  # a body the gateway passes on for the upstream to judge: judged here
            return FakeResponse(400, _JSON, [_refusal(exc)], 0)

    async def aclose(self) -> None:
        return None

"""Talking to upstreams: the HTTP client, endpoint pools, credentials, egress proxies.

`Transport` and `UpstreamAnswer` are the seam the proxy sends through: `client.UpstreamClient`
(sockets) and `fake.FakeTransport` (the `fake` provider, in process) both implement them.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from tollway.core.config import Timeouts


class UpstreamAnswer(Protocol):
    """An upstream's response once its head has arrived; the body is read or iterated once."""

    status: int
    encoded: bool  # a Content-Encoding the gateway did not ask for: the bytes are not the body

    @property
    def headers(self) -> list[tuple[str, str]]: ...

    @property
    def waited(self) -> float:
        """Seconds spent waiting for the upstream (connect, head, body), the gateway's own time
        excluded: what tollway_gateway_overhead_seconds subtracts."""
        ...

    def header(self, name: str) -> str | None: ...

    async def read(self, limit: int | None = None) -> bytes: ...

    async def read_prefix(self, limit: int) -> bytes: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Sends one request; returns when the response head is in."""

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
                      timeouts: Timeouts, extra_head: bytes = b"") -> UpstreamAnswer: ...

    async def aclose(self) -> None: ...

"""What can go wrong talking to an upstream, as exceptions the proxy maps to its own answers.

Exception messages name the upstream host:port and what went wrong, never a header value.
"""
from __future__ import annotations


class UpstreamError(Exception):
    """Base of every failure talking to an upstream."""

    waited = 0.0  # seconds the failed attempt waited for the upstream (set where known)


class UpstreamConnectError(UpstreamError):
    """No usable response: DNS, refused, TLS or proxy failure, or the connection broke or sent
    garbage before the response headers were complete (a 502 for the client)."""


class UpstreamUnreachable(UpstreamConnectError):
    """No connection could be made (DNS, refused, TLS or proxy failure): the request was never
    sent, so no upstream did any work for it and another replica is safe to try for free."""


class UpstreamMalformedHead(UpstreamConnectError):
    """The response's status line or headers could not be parsed (or were too large)."""


class UpstreamTimeout(UpstreamError):
    """A timeout expired; `phase` is "connect", "first_byte", "idle" or "total" (a 504 for the
    client)."""

    def __init__(self, phase: str, origin: str) -> None:
        super().__init__(f"upstream {origin}: no progress within the {phase} timeout")
        self.phase = phase


class UpstreamDisconnected(UpstreamError):
    """The connection broke, or the body was malformed, after the response headers arrived."""


class UpstreamTooLarge(UpstreamError):
    """The body is larger than the reader's limit; the connection was dropped unread."""

    def __init__(self, limit: int, origin: str) -> None:
        super().__init__(f"upstream {origin}: body larger than {limit} bytes")
        self.limit = limit


class _NoResponse(UpstreamConnectError):
    """Closed before a single response byte: on a reused connection, the keep-alive race.
    Raised by the connection (connection.py), caught by the client (client.py) to replay once."""

"""What goes on the wire before a request's body: the origin a URL names and the request head.

Built once per origin and once per (method, URL, headers) and cached by the client (client.py),
so the common request (a provider's URL and static headers) neither parses a URL nor checks a
header for CR/LF again; only Content-Length and the per-request header lines are added to it.
"""
from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from tollway.gateway.upstream.egress import ProxyRoute, ProxyRules

_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class _Origin:
    """Everything derived once from a URL's scheme://host:port."""

    __slots__ = ("key", "host", "port", "tls", "host_header", "label", "proxy", "target_prefix")

    def __init__(self, origin_url: str, proxies: ProxyRules) -> None:
        scheme, self.host, self.port = endpoint_of(origin_url)
        self.tls = scheme == "https"
        self.key = (scheme, self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if self.tls else 80)
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.label = f"{host}:{self.port}"
        self.proxy: ProxyRoute | None = proxies.route(scheme, self.host)
        # Through a plain-HTTP proxy the request line carries the absolute URL.
        absolute = self.proxy is not None and not self.tls
        self.target_prefix = f"http://{self.host_header}" if absolute else ""


def endpoint_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the port defaulted by scheme; any user:password@
    is left out. Raises ValueError for another scheme, no host or a bad port."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("upstream URL must be http:// or https:// with a host")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def split_url(url: str) -> tuple[str, str]:
    """("scheme://authority", "/path?query") of an absolute URL; raises ValueError."""
    start = url.find("://")
    if start < 0:
        raise ValueError("upstream URL must be absolute")
    cut = len(url)
    for mark in "/?#":
        found = url.find(mark, start + 3)
        if 0 <= found < cut:
            cut = found
    target = url[cut:].split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    return url[:cut], target


def _request_head(method: str, target: str, origin: _Origin, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers up to, not including, Content-Length and the blank line
    (`_framed` adds those); raises ValueError on CR/LF injection or non-latin-1 text."""
    lines = [f"{method} {origin.target_prefix}{target} HTTP/1.1\r\n", f"Host: {origin.host_header}\r\n"]
    for name, value in headers:
        if name.lower() not in _FRAMING_HEADERS:
            lines.append(f"{name}: {value}\r\n")
    if not any(name.lower() == "accept-encoding" for name, _ in headers):
        # The gateway decodes no content-coding: ask for none, so an upstream that compresses
        # by default sends plain bytes (and one that compresses anyway is refused, not relayed).
        lines.append("Accept-Encoding: identity\r\n")
    if origin.proxy is not None and origin.target_prefix and origin.proxy.authorization:
        lines.append(f"Proxy-Authorization: {origin.proxy.authorization}\r\n")
    head = "".join(lines)
    # Each line contributes exactly one CR and one LF; any extra came from a name, value or
    # target and would let it inject headers. The message must not echo the offending value.
    if head.count("\n") != len(lines) or head.count("\r") != len(lines) or " " in target:
        raise ValueError("request target or a header contains CR, LF or a space")
    return head.encode("latin-1")


def _framed(head: _Head, body_len: int, extra: bytes = b"") -> bytes:
    """The whole request head: `head`, the `extra` header lines, Content-Length (when there is
    a body or the method expects one) and the blank line."""
    if body_len or head.with_length:
        return head.prefix + extra + b"Content-Length: %d\r\n\r\n" % body_len
    return head.prefix + extra + b"\r\n"


class _Head:
    """A request head prepared once per (method, URL, headers): the next request with the same
    ones (the common case: a provider's URL and static headers) skips building and checking it."""

    __slots__ = ("origin", "prefix", "with_length")

    def __init__(self, method: str, url: str, headers: list[tuple[str, str]], origins: Callable[[str], _Origin]) -> None:
        origin_url, target = split_url(url)
        self.origin: _Origin = origins(origin_url)
        self.prefix = _request_head(method, target, self.origin, headers)
        self.with_length = method not in _BODYLESS_METHODS

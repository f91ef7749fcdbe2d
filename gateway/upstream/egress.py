"""Which upstream connections go through a forward proxy, and the CONNECT tunnel for HTTPS.

The rules are the ones curl, requests and urllib follow: `HTTPS_PROXY` for https:// URLs,
`HTTP_PROXY` for http:// URLs (lower-case names too; lower-case wins), and `NO_PROXY`, a comma
list of hosts or domain suffixes (`*` = everything) that go direct. `urllib.request` implements
exactly these rules (including ignoring `HTTP_PROXY` in CGI environments), so we reuse it and read
the environment once, when the client is built.

Plain http:// targets go to the proxy in absolute form (`GET http://host/path`); https:// targets
go through `CONNECT host:port`, after which TLS to the real host runs inside the tunnel.
"""
from __future__ import annotations

import asyncio
import base64
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

_MAX_CONNECT_REPLY = 16 * 1024


class ProxyTunnelError(ConnectionError):
    """The proxy refused or broke the CONNECT handshake (never carries the proxy credentials)."""


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """Where to dial instead of the target, and the Proxy-Authorization value, if any."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)


class ProxyRules:
    """The proxy environment, read once; `route()` answers per target host."""

    def __init__(self, proxies: dict[str, str]) -> None:
        self._no_proxy = {"no": proxies["no"]} if "no" in proxies else {}
        self._routes = {
            scheme: _parse_proxy_url(proxies[scheme], scheme)
            for scheme in ("http", "https")
            if proxies.get(scheme)
        }

    @classmethod
    def from_environ(cls) -> ProxyRules:
        """Rules from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case) as they are now."""
        return cls(urllib.request.getproxies_environment())

    def route(self, scheme: str, host: str) -> ProxyRoute | None:
        """The proxy for `scheme://host`, or None to connect directly."""
        proxy = self._routes.get(scheme)
        if proxy is None:
            return None
        # proxy_bypass_environment is public in urllib.request but missing from typeshed
        if self._no_proxy and urllib.request.proxy_bypass_environment(host, self._no_proxy):  # type: ignore[attr-defined]
            return None
        return proxy


def _parse_proxy_url(url: str, scheme: str) -> ProxyRoute:
    """A ProxyRoute from an http:// proxy URL; raises ValueError for anything else."""
    if "://" not in url:
        url = "http://" + url  # curl's reading of a bare host:port
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        # The message names the variable, never its value: the URL may carry credentials.
        raise ValueError(f"the {scheme} proxy setting must be an http://host:port URL")
    authorization = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    return ProxyRoute(parts.hostname, parts.port or 80, authorization)


def connect_request(host: str, port: int, authorization: str | None) -> bytes:
    """The CONNECT request head for `host:port` (IPv6 literals bracketed)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if authorization is not None:
        head += f"Proxy-Authorization: {authorization}\r\n"
    return (head + "\r\n").encode("latin-1")


class _TunnelHandshake(asyncio.Protocol):
    """Reads the proxy's reply to CONNECT; the transport is handed to TLS afterwards."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.established: asyncio.Future[None] = loop.create_future()
        self._reply = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reply += data
        end = self._reply.find(b"\r\n\r\n")
        if end < 0:
            if len(self._reply) > _MAX_CONNECT_REPLY:
                self._finish(ProxyTunnelError("proxy reply to CONNECT is too large"))
            return
        if end + 4 != len(self._reply):
            # The target speaks only after our TLS ClientHello; early bytes mean a broken proxy.
            self._finish(ProxyTunnelError("proxy sent data before the tunnel was used"))
            return
        self._finish(_tunnel_status_error(bytes(self._reply[:end])))

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(ProxyTunnelError("proxy closed the connection during CONNECT"))

    def _finish(self, error: ProxyTunnelError | None) -> None:
        if self.established.done():
            return
        if error is None:
            self.established.set_result(None)
            self._transport.pause_reading()  # type: ignore[union-attr]  # TLS takes over
        else:
            self.established.set_exception(error)


def _tunnel_status_error(head: bytes) -> ProxyTunnelError | None:
    """None if the CONNECT reply head says 2xx, else the error to raise."""
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return ProxyTunnelError("proxy sent a malformed reply to CONNECT")
    status = int(parts[1])
    if 200 <= status < 300:
        return None
    return ProxyTunnelError(f"proxy refused CONNECT with status {status}")


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: ProxyRoute, host: str, port: int
) -> asyncio.Transport:
    """A TCP transport to `proxy`, tunnelled to host:port and paused, ready for `loop.start_tls`.

    Raises OSError (ProxyTunnelError included) if the proxy cannot be reached or refuses.
    """
    transport, handshake = await loop.create_connection(
        lambda: _TunnelHandshake(loop), proxy.host, proxy.port
    )
    try:
        transport.write(connect_request(host, port, proxy.authorization))
        await handshake.established
    except BaseException:
        transport.close()
        raise
    return transport

"""tollway.gateway.downstream.backpressure's socket directory, against real sockets in this process."""
from __future__ import annotations

import asyncio
import os
import socket
import time
from unittest import mock

import pytest

from tollway.gateway.downstream import backpressure
from tollway.gateway.downstream.backpressure import SocketDirectory, parse_peer


def _pair(bind: str = "127.0.0.1", family: socket.AddressFamily = socket.AF_INET,
          dualstack: bool = False) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.create_server((bind, 0), family=family, dualstack_ipv6=dualstack)
    client = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
    server, _ = listener.accept()
    return listener, client, server


def _find(ends: backpressure.Ends) -> backpressure.Found | None:
    return asyncio.run(SocketDirectory().find(ends, time.monotonic()))


def test_concurrent_finds_share_one_walk_and_find_the_connection() -> None:
    listener, client, server = _pair()
    ends = (server.getsockname()[:2], server.getpeername()[:2])
    directory, walks = SocketDirectory(), []
    real_walk = backpressure._walk_fds

    def counted_walk() -> dict:  # type: ignore[type-arg]
        walks.append(1)
        return real_walk()

    async def scenario() -> list[int | None]:
        since = time.monotonic()
        return await asyncio.gather(*(directory.find(ends, since) for _ in range(5)))

    try:
        with mock.patch.object(backpressure, "_walk_fds", counted_walk):
            found = asyncio.run(scenario())
        assert [f[0] if f else None for f in found] == [server.fileno()] * 5
        assert len(walks) == 1
    finally:
        for sock in (client, server, listener):
            sock.close()


def test_an_unknown_connection_is_given_up_after_one_walk() -> None:
    directory = SocketDirectory()
    ends = (("127.0.0.1", 1), ("127.0.0.1", 2))  # no such connection in this process

    async def scenario() -> int | None:
        return await asyncio.wait_for(directory.find(ends, time.monotonic()), 5)

    assert asyncio.run(scenario()) is None


def test_parse_peer_reads_granians_addresses() -> None:
    assert parse_peer("127.0.0.1:5678") == ("127.0.0.1", 5678)
    assert parse_peer("[::1]:5678") == ("::1", 5678)
    assert parse_peer("[::ffff:10.0.0.7]:5678") == ("10.0.0.7", 5678)  # an IPv4 client of a `::` listener
    assert parse_peer("[fe80::1%2]:5678") == ("fe80::1", 5678)  # granian's zone is a number, the kernel's a name
    assert parse_peer("[::]:8080") == ("::", 8080)
    assert parse_peer("unix-socket") is None


def _granian_ends(listener: socket.socket, client: socket.socket, bracket: bool) -> backpressure.Ends:
    """The ends as granian's scope spells them: the LISTENER's address (a wildcard under
    `--host 0.0.0.0` / `::`) and the client's, an IPv4 client of `::` as ::ffff:a.b.c.d."""
    host, port = listener.getsockname()[:2]
    peer_host, peer_port = client.getsockname()[:2]
    if bracket:
        server, peer = f"[{host}]:{port}", f"[::ffff:{peer_host}]:{peer_port}"
    else:
        server, peer = f"{host}:{port}", f"{peer_host}:{peer_port}"
    local, client_addr = parse_peer(server), parse_peer(peer)
    assert local is not None and client_addr is not None
    return local, client_addr


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_a_connection_to_a_wildcard_listener_is_found(bind: str) -> None:
    """granian's scope.server is the listener's address, which names no local address when it
    listens on every one: the connection is still found, by its peer and local port, and its
    exact ends are the accepted socket's (IPv4 on both sides for an IPv4 client of `::`)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    if family == socket.AF_INET6 and not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 here")
    try:
        listener, client, server = _pair(bind, family, dualstack=family == socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"cannot listen on {bind}: {exc}")
    try:
        found = _find(_granian_ends(listener, client, bracket=family == socket.AF_INET6))
        assert found is not None
        fd, ends = found
        assert fd == server.fileno()
        assert ends == (("127.0.0.1", listener.getsockname()[1]), ("127.0.0.1", client.getsockname()[1]))
    finally:
        for sock in (client, server, listener):
            sock.close()


def test_a_wildcard_connection_made_after_the_last_walk_never_takes_another_clients_socket() -> None:
    """Two clients from one address and port (a NAT keeping source ports) reach two local
    addresses of a wildcard listener; the map was walked when only the first was connected.
    The second's lookup must not take the first's socket (it would be measured against, and
    shut down for, the wrong client): a walk begun after it connected sees both, and then
    neither is measured."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    socks = [listener]

    def connect(to: str, source_port: int) -> socket.socket:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("127.0.0.9", source_port))
        c.connect((to, port))
        server, _ = listener.accept()
        socks.extend((c, server))
        return server

    async def run() -> None:
        directory = SocketDirectory()
        source_port = 40000 + os.getpid() % 20000
        first = connect("127.0.0.1", source_port)
        wanted = (("0.0.0.0", port), ("127.0.0.9", source_port))
        found = await directory.find(wanted, time.monotonic() - 1)
        assert found is not None and found[0] == first.fileno()
        connect("127.0.0.2", source_port)
        assert await directory.find(wanted, time.monotonic()) is None  # two it could be: neither

    try:
        asyncio.run(run())
    finally:
        for sock in socks:
            sock.close()


def test_a_specific_listener_address_must_match() -> None:
    """Only a wildcard matches any local address: a named one that is not the socket's is not it."""
    listener, client, server = _pair()
    try:
        (_, port), peer = server.getsockname()[:2], server.getpeername()[:2]
        assert _find((("127.0.0.2", port), peer)) is None
        assert _find((("127.0.0.1", port), peer)) is not None
    finally:
        for sock in (client, server, listener):
            sock.close()

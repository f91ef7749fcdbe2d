"""tollway.gateway.downstream.backpressure's socket directory, against real sockets in this process."""
from __future__ import annotations

import asyncio
import socket
import time
from unittest import mock

from tollway.gateway.downstream import backpressure
from tollway.gateway.downstream.backpressure import SocketDirectory, parse_peer


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    return listener, client, server


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
        assert found == [server.fileno()] * 5
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
    assert parse_peer("unix-socket") is None

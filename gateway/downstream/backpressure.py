"""Backpressure from a streaming client to its upstream, which granian does not give us.

granian's RSGI stream transport (`send_bytes`) puts every chunk into an *unbounded* channel and
returns at once, whether or not the client reads: a client that opens a stream and stops
reading made the gateway drain its upstream into memory (100 MB in a second). The gateway
cannot see that channel, but the kernel can see the client's socket, which lives in this very
process: TCP_INFO's `tcpi_bytes_acked` says how many response bytes the client's TCP stack
has acknowledged. The gateway knows how many it has sent, so

    backlog = bytes sent since the first look - bytes the client acked since then

bounds what waits for the client in granian's channel and the kernel's send buffer. While
the backlog is over HIGH_WATER the relay stops reading its upstream (whose own connection
then stops reading at 256 KiB: TCP pushes back on the upstream) until it falls to LOW_WATER;
a client that acknowledges nothing for `server.client_idle_timeout` is dropped (its socket is
shut down, which ends granian's side too).

Looking costs a few system calls, so a stream looks only once it has sent WATCH_FROM bytes
(most LLM streams never do), and then before each chunk. Finding the socket means walking
this process's file descriptors for the one connected from the request's client to its server
address (`scope.client`, `scope.server`), in a thread (~4 us an fd); the map found is kept and
re-walked at most once per RESCAN_SECONDS. `scope.server` is the *listener's* address: under
`--host 0.0.0.0` or `::` (every shipped deployment) it names no local address at all, so a
connection is known by its peer address and local port, a wildcard local address matching any,
and an IPv4 client of a `::` listener (`::ffff:a.b.c.d` to the kernel) is spelt as plain IPv4 on
both sides. Linux only; where the socket cannot be found (not Linux, a Unix socket, two
connections the addresses cannot tell apart) the stream is still bounded by
`server.max_upstream_body_bytes` and the timeouts.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

WATCH_FROM = 256 * 1024  # bytes a stream sends before its client's socket is looked at
HIGH_WATER = 512 * 1024  # unacknowledged bytes at which the relay waits for the client
LOW_WATER = 128 * 1024  # ... and resumes
RESCAN_SECONDS = 0.25  # at most one walk of the file descriptors per this many seconds
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # seconds between looks while waiting
_TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in Linux's struct tcp_info
_TCP_INFO_LEN = 128


class ClientStalled(Exception):
    """The client acknowledged nothing for the idle timeout; its connection was shut down."""


Addr = tuple[str, int]
Ends = tuple[Addr, Addr]  # (local, peer) addresses: one TCP connection
Found = tuple[int, Ends]  # a connection's fd and its exact ends
_Key = tuple[Addr, int]  # (peer, local port): all of a connection granian's addresses always name
_WILDCARDS = frozenset(("0.0.0.0", "::"))  # a listener's "any local address"
_MAPPED = "::ffff:"  # an IPv4 peer of a dual-stack IPv6 socket: ::ffff:a.b.c.d


class SocketDirectory:
    """Which file descriptor holds a given TCP connection (its local and peer addresses)."""

    def __init__(self) -> None:
        self._by_key: dict[_Key, list[int]] = {}
        self._scanned_at = -RESCAN_SECONDS  # when the walk that made _by_key began
        self._walking: asyncio.Future[None] | None = None

    async def find(self, wanted: Ends, since: float) -> Found | None:
        """The fd and exact ends of the connection `wanted` names (its local address may be a
        wildcard), which existed at monotonic time `since`; None only once a walk begun after
        `since` did not find it (then it never will: not a TCP socket of ours), or found two it
        could be (for a wildcard only a walk begun after `since` is trusted). Joins the walk in
        progress, or the next one, rather than walking more often than RESCAN_SECONDS."""
        # A wildcard names its connection by peer and local port alone: a map walked before the
        # connection was made may hold another connection of that peer and port (a NAT keeping
        # source ports, two local addresses) and not this one, so it needs a walk begun after.
        wildcard = wanted[0][0] in _WILDCARDS
        found = self._lookup(wanted)
        while (found is None or wildcard) and self._scanned_at < since:
            if self._walking is None:
                self._walking = asyncio.ensure_future(self._walk())
            await asyncio.shield(self._walking)  # a cancelled stream leaves the walk to the others
            found = self._lookup(wanted)
        return found

    async def _walk(self) -> None:
        """Walk the fds in a thread: ~4 us an fd, so 40 ms at 10k connections, off the loop."""
        try:
            wait = self._scanned_at + RESCAN_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            began = time.monotonic()
            try:
                self._by_key = await asyncio.to_thread(_walk_fds)
            except RuntimeError:  # no thread to be had (the loop is closing): nothing found
                self._by_key = {}
            self._scanned_at = began  # found or not: the streams waiting on it are answered
        finally:
            self._walking = None

    def _lookup(self, wanted: Ends) -> Found | None:
        """The one connection still on an fd of the map that `wanted` names. Nearly always one
        candidate; two only when a client reached two local addresses of a wildcard listener
        from the same address and port, and then neither is measured (nor dropped) rather
        than maybe the wrong one."""
        local, peer = wanted
        hits: list[Found] = []
        for fd in self._by_key.get((peer, local[1]), ()):
            ends = _ends_of(fd)  # the fd may hold another connection since the walk
            if ends is not None and _names(wanted, ends):
                hits.append((fd, ends))
        return hits[0] if len(hits) == 1 else None


DIRECTORY = SocketDirectory()  # one per worker process: the fds are the process's


class ClientFlow:
    """The acknowledged-bytes gauge of one streaming response; see the module doc."""

    __slots__ = ("_ends", "_idle", "_since", "_fd", "_base_sent", "_base_acked", "_gave_up")

    def __init__(self, server: str, client: str, idle_timeout: float) -> None:
        local, peer = parse_peer(server), parse_peer(client)
        # What granian says (the listener's address, maybe a wildcard) until the socket is
        # found, then that socket's exact ends, which every later look must see unchanged.
        self._ends: Ends | None = (local, peer) if local is not None and peer is not None else None
        self._idle = idle_timeout
        self._since = time.monotonic()  # the client's connection exists by now
        self._fd: int | None = None
        self._base_sent = 0
        self._base_acked = 0
        self._gave_up = self._ends is None

    async def wait(self, sent: int) -> None:
        """Return once the client is at most LOW_WATER behind (at once if it is under
        HIGH_WATER); raise ClientStalled if it takes nothing for the idle timeout."""
        if self._fd is None and not self._gave_up:
            await self._find(sent)
        acked = self._acked()
        if acked is None or sent - self._base_sent - (acked - self._base_acked) < HIGH_WATER:
            return
        await self._drain(sent, acked)

    async def _drain(self, sent: int, acked: int) -> None:
        pause, last_acked, since = _POLL_FIRST, acked, time.monotonic()
        while sent - self._base_sent - (acked - self._base_acked) > LOW_WATER:
            await asyncio.sleep(pause)
            now_acked = self._acked()
            if now_acked is None:
                return  # the socket is gone: granian will tell the sender
            acked = now_acked
            if acked != last_acked:
                last_acked, since, pause = acked, time.monotonic(), _POLL_FIRST
            elif time.monotonic() - since > self._idle:
                self._shut_down()
                raise ClientStalled(f"client acknowledged nothing for {self._idle:g}s")
            else:
                pause = min(pause * 2, _POLL_MAX)

    async def _find(self, sent: int) -> None:
        """Locate the client's socket and take the baseline: what was sent so far is assumed
        acknowledged (so the bound is WATCH_FROM + HIGH_WATER at worst)."""
        found = await DIRECTORY.find(self._ends, self._since)  # type: ignore[arg-type]
        acked = _bytes_acked(found[0]) if found is not None else None
        if found is None or acked is None:
            self._gave_up = True  # not findable: the stream is bounded by max_upstream_body_bytes only
            return
        (self._fd, self._ends), self._base_sent, self._base_acked = found, sent, acked

    def _acked(self) -> int | None:
        """The client's acknowledged byte count now, or None if its socket is not known."""
        if self._gave_up or self._fd is None:
            return None
        acked = _bytes_acked(self._fd)
        # Closed, the fd now holds another connection, or a counter that went back (another
        # connection's): stop looking rather than measure, or drop, the wrong client.
        if acked is None or acked < self._base_acked or _ends_of(self._fd) != self._ends:
            self._gave_up = True
            return None
        return acked

    def _shut_down(self) -> None:
        if self._fd is None:
            return
        try:
            sock = socket.socket(fileno=self._fd)
        except OSError:
            return
        try:
            if _ends_of_socket(sock) == self._ends:  # checked on the very object that shuts it
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        finally:
            sock.detach()  # the fd is granian's: never close it from here


def parse_peer(client: str) -> Addr | None:
    """("host", port) of granian's `scope.client` or `scope.server` ("1.2.3.4:5678",
    "[::1]:5678", "[::ffff:1.2.3.4]:5678"), the host spelt as _ends_of_socket spells it; or None."""
    host, sep, port = client.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return _host(host.strip("[]")), int(port)


def _host(host: str) -> str:
    """One spelling per address for what granian and the kernel both name: no IPv6 zone
    (granian gives its number, the kernel its interface name), and an IPv4-mapped IPv6
    address as the IPv4 address it is."""
    host = host.partition("%")[0]
    if host.startswith(_MAPPED) and "." in host:
        return host[len(_MAPPED):]
    return host


def _names(wanted: Ends, ends: Ends) -> bool:
    """Whether granian's `wanted` (a listener's local address, maybe a wildcard) names `ends`."""
    (want_host, want_port), (host, port) = wanted[0], ends[0]
    return wanted[1] == ends[1] and want_port == port and (want_host in _WILDCARDS or want_host == host)


def _ends_of(fd: int) -> Ends | None:
    """(local, peer) of the TCP connection on `fd`, or None."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return _ends_of_socket(sock)
    finally:
        sock.detach()


def _ends_of_socket(sock: socket.socket) -> Ends | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        local, peer = sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    return (_host(local[0]), local[1]), (_host(peer[0]), peer[1])


def _bytes_acked(fd: int) -> int | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):  # not TCP, closed, or no TCP_INFO on this system
        return None
    finally:
        sock.detach()
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    value: int = struct.unpack_from("Q", info, _TCPI_BYTES_ACKED)[0]
    return value


def _walk_fds() -> dict[_Key, list[int]]:
    """This process's TCP connections by (peer, local port), which is what granian's addresses
    can name (see the module doc); the local address is checked on lookup."""
    found: dict[_Key, list[int]] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux
        return found
    for name in names:
        ends = _ends_of(int(name))
        if ends is not None:
            found.setdefault((ends[1], ends[0][1]), []).append(int(name))
    return found

"""What every upstream connection on one event loop shares: its write batch and its wait clock.

Both trade a per-request cost (a write wake-up, a timer) for one per loop turn or tick; the
client makes one of each per running loop (`UpstreamClient._dial`) and hands them to every
connection it opens there (connection.py).
"""
from __future__ import annotations

import asyncio


class _WriteBatch:
    """Request writes of one event-loop turn: the first goes out at once, the rest together at
    the end of the turn.

    A write to an idle upstream wakes its process, and on a VM that wake-up (an
    inter-processor interrupt) is charged to the writer: perf put ~11% of the gateway's CPU at
    c=32 inside write(). granian hands requests over in bursts, and between two requests' writes
    lies a whole request's Python work, long enough for the upstream to answer and sleep again.
    Written back to back at the end of the turn, a burst wakes it about twice instead of once
    per request (c=32: +15% req/s). The first write of a turn is not held back, so a lone
    request waits for nothing (c=1 p50 unchanged within 5 us).
    """

    __slots__ = ("loop", "_pending", "_in_turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[tuple[asyncio.Transport, bytes]] = []
        self._in_turn = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        if self._in_turn:
            self._pending.append((transport, data))
            return
        transport.write(data)
        self._in_turn = True
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._in_turn = False
        pending, self._pending = self._pending, []
        for transport, data in pending:
            if not transport.is_closing():  # dropped meanwhile (timeout, cancelled request)
                transport.write(data)


class _WaitClock:
    """Timeouts of the waits on one loop that are seconds long, checked by one ticker.

    A wait's timer (call_later, then cancel) costs ~1.7 us of uvloop's time, and a request
    waits two to four times (its head, then between body chunks); the first_byte and idle
    bounds it guards (300 s and 120 s by default) almost never fire. So a wait of EXACT_BELOW
    seconds or more is entered in this table instead, and one timer every TICK seconds, running
    only while the table is not empty, ends the overdue waits: at most TICK late, which a
    bound of seconds does not notice. A shorter wait keeps its exact timer.
    """

    TICK = 0.05
    EXACT_BELOW = 1.0

    __slots__ = ("loop", "_due", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: dict[asyncio.Future[bool], float] = {}
        self._armed = False

    def watch(self, waiter: asyncio.Future[bool], deadline: float) -> None:
        self._due[waiter] = deadline
        if not self._armed:
            self._armed = True
            self.loop.call_later(self.TICK, self._tick)

    def unwatch(self, waiter: asyncio.Future[bool]) -> None:
        self._due.pop(waiter, None)

    def _tick(self) -> None:
        now = self.loop.time()
        try:
            for waiter, deadline in list(self._due.items()):
                if deadline <= now:
                    del self._due[waiter]
                    _expire(waiter)
        finally:  # re-armed whatever happened: later waits depend on it
            self._armed = bool(self._due)
            if self._armed:
                self.loop.call_later(self.TICK, self._tick)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)

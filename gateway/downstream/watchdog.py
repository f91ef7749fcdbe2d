"""The requests in flight, looked at once per tick for the two waits that have no timer.

A timer per request costs about a microsecond on every request, and nearly every request ends
long before either bound below matters. So instead one timer per worker walks the requests in
flight every `TICK` seconds (a dict walk: ~0.1 us a request) and acts on those that are late:

- **A body upload slower than `server.body_read_timeout`**: the request is cancelled and
  answered 408 (`request_timeout`), so a client trickling its body cannot hold a connection
  and a task for ever.
- **A client that left while its request waits**: granian says so only when asked
  (`proto.client_disconnect()`), and asking costs a task. A request still running after
  `WATCH_AFTER` seconds gets that watcher; when the client goes, the request is cancelled
  at once, so its concurrency slot and reservation are freed then, not at the upstream's
  first_byte timeout (300 s by default), and its upstream call is dropped.

`Exchange.cancel_reason` tells the request's handlers why they were cancelled (a drain sets
none): `client_closed` answers nobody, `body_timeout` answers 408.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tollway.gateway.exchange import Exchange

TICK = 0.25  # seconds between walks
WATCH_AFTER = 0.5  # seconds a request runs before the watcher for its client is armed
BODY = "body"  # Exchange.phase while the request body is being read
ANSWERED = "answered"  # ... once the whole answer went out (counting its tokens may still follow)


class Watchdog:
    """Walks the requests in flight (task -> Exchange, which the app adds and removes); see the
    module doc."""

    def __init__(self, body_read_timeout: Callable[[], float]) -> None:
        self.in_flight: dict[asyncio.Task[Any], Exchange] = {}
        self._body_read_timeout = body_read_timeout  # read per tick: a reload may change it
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(TICK, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ex in self.in_flight.values():
            _disarm(ex)

    @staticmethod
    def unwatch(ex: Exchange) -> None:
        """Stop watching the client of a request that is over (one with a watcher)."""
        _disarm(ex)

    def _tick(self) -> None:
        try:
            self._walk()
        finally:  # whatever one request did, the next walks still happen
            if self._loop is not None and self._timer is not None:
                self._timer = self._loop.call_later(TICK, self._tick)

    def _walk(self) -> None:
        now = time.perf_counter()
        body_deadline = now - self._body_read_timeout()
        watch_deadline = now - WATCH_AFTER
        for task, ex in list(self.in_flight.items()):
            if ex.start > watch_deadline:
                continue
            if ex.phase == BODY and ex.start < body_deadline:
                _cancel(task, ex, "body_timeout")
            elif ex.watcher is None and ex.proto is not None:
                self._watch(task, ex)

    def _watch(self, task: asyncio.Task[Any], ex: Exchange) -> None:
        assert ex.proto is not None  # the tick only watches requests that have a protocol
        try:
            waiter = asyncio.ensure_future(ex.proto.client_disconnect())
        except (AttributeError, RuntimeError, TypeError):  # a server without the call: nothing to watch
            ex.watcher = False
            return
        ex.watcher = waiter
        waiter.add_done_callback(lambda done: _client_left(done, task, ex))


def _client_left(done: asyncio.Future[Any], task: asyncio.Task[Any], ex: Exchange) -> None:
    if done.cancelled() or done.exception() is not None or task.done() or ex.phase == ANSWERED:
        return  # (a client leaving after its whole answer is the normal end, not a reason to cancel)
    _cancel(task, ex, "client_closed")


def _cancel(task: asyncio.Task[Any], ex: Exchange, reason: str) -> None:
    if ex.cancel_reason is None and not task.done():
        ex.cancel_reason = reason
        task.cancel()


def _disarm(ex: Exchange) -> None:
    watcher, ex.watcher = ex.watcher, None
    if isinstance(watcher, asyncio.Future) and not watcher.done():
        watcher.cancel()

"""The worker's long-lived heap, kept out of the cycle collector's full passes.

A worker holds tens of thousands of objects it never frees: modules, classes, functions, the
config, the routing tables, the price dataset. Python's cycle collector walks all of them in
every full (generation 2) pass, and under load a full pass comes about once a second and
holds the event loop ~30 ms (measured on the bench's EPYC core: 26-39 ms for ~68k objects),
which was most of `bench/run`'s c=32 p99. `gc.freeze()` once the worker is built moves them
to the collector's permanent generation: full passes then walk only what was made since
(~0.3 ms under the same load), and every request keeps the default, prompt collection.

A frozen object is never collected, even when it becomes cyclic garbage: a config reload
retires a runtime (and its limiter, books, hooks) that may be frozen. So a reload thaws the
heap (everything is collected as usual again, full passes included) and the heap is settled
anew once every retired runtime is gone: requests in flight keep the runtime they started
with, and a long stream may hold one for minutes.
"""
from __future__ import annotations

import asyncio
import gc
import weakref

RESETTLE_SECONDS = 60.0  # after a reload: how often to look whether the retired runtimes are gone


class Heap:
    """Freezes the worker's heap when it is built, thaws it for a reload's garbage."""

    def __init__(self, resettle_seconds: float = RESETTLE_SECONDS) -> None:
        self.resettle_seconds = resettle_seconds
        self._retired: list[weakref.ref[object]] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def frozen(self) -> int:
        """Objects in the permanent generation (0 while thawed)."""
        return gc.get_freeze_count()

    def settle(self) -> None:
        """Collect what is garbage now, then freeze the rest: call once the worker is built,
        before it serves (the collection is one full pass, ~30 ms)."""
        gc.collect()
        gc.freeze()

    def retire(self, old: object, loop: asyncio.AbstractEventLoop) -> None:
        """A reload replaced `old`: thaw, so its garbage is collected, and settle again once
        it (and any other retired object) is gone."""
        gc.unfreeze()
        self._retired.append(weakref.ref(old))
        if self._timer is None:
            self._timer = loop.call_later(self.resettle_seconds, self._resettle, loop)

    def _resettle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        gc.collect()  # the retired objects' cycles, if nothing holds them any more
        self._retired = [ref for ref in self._retired if ref() is not None]
        if self._retired:  # a request still holds one: look again later
            self._timer = loop.call_later(self.resettle_seconds, self._resettle, loop)
            return
        gc.freeze()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

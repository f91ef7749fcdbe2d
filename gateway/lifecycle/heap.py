"""The worker's long-lived heap, kept out of the cycle collector's full passes.

A worker holds tens of thousands of objects it never frees: modules, classes, functions, the
config, the routing tables, the price table. Python's cycle collector walks all of them in
every full (generation 2) pass, and under load a full pass comes about once a second and
holds the event loop ~30 ms (measured on the bench's EPYC core: 26-39 ms for ~68k objects),
which was most of `bench/run`'s c=32 p99. `gc.freeze()` once the worker is built moves them
to the collector's permanent generation: full passes then walk only what was made since
(~0.3 ms under the same load), and every request keeps the default, prompt collection.

A frozen object is never collected, even when it becomes cyclic garbage: a runtime a reload
retired, a request that was in flight at the freeze. (Pooled upstream connections break their
own cycle when lost, so they need no collector.) So the heap is settled again every RESETTLE_SECONDS:
thawed, collected, frozen, in one turn of the loop (one full pass, ~30 ms): what became
garbage while frozen lives at most that long, and the frozen set follows what the worker
holds now.
"""
from __future__ import annotations

import asyncio
import gc

RESETTLE_SECONDS = 300.0  # one ~30 ms full pass per period, instead of about one a second under load


class Heap:
    """Freezes the worker's heap once built, and settles it again every `resettle_seconds`."""

    def __init__(self, resettle_seconds: float = RESETTLE_SECONDS) -> None:
        self.resettle_seconds = resettle_seconds
        self.settles = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def frozen(self) -> int:
        """Objects in the permanent generation."""
        return gc.get_freeze_count()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Settle now (once the worker is built, before it serves) and every period after."""
        self._settle(loop)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._closed:
            return
        gc.unfreeze()  # (nothing frozen the first time)
        gc.collect()  # what is garbage now, frozen garbage included
        gc.freeze()
        self.settles += 1
        self._timer = loop.call_later(self.resettle_seconds, self._settle, loop)

    def close(self) -> None:
        """No more settling (shutdown); what is frozen stays so."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

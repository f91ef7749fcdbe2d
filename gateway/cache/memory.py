"""The in-process cache store: bounded in bytes, least recently used out first, entries
expire after their ttl.

An OrderedDict in use order (a hit moves its entry to the end; eviction pops from the front)
holds a `Slot` (expiry, entry) per key: entries stay objects, so a hit decodes nothing, and
none of them is tracked by the cycle collector (a full pass would otherwise walk every entry
of a cache of hundreds of thousands: tens of milliseconds on the loop, growing with the cache). Expired
entries are dropped when read, and from the front while making room, so memory stays within
`max_bytes` (answers plus a fixed per-entry overhead for the key and bookkeeping) whatever
is stored. The clock is injected (monotonic
seconds) so tests can move time.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from tollway.core.cache.entry import Entry

ENTRY_OVERHEAD = 400  # bytes an entry costs beyond its answer's: its 64-char key, the Entry and its usage, Slot, dict slot


class Slot(msgspec.Struct, gc=False):
    """A stored entry and when it expires. Untracked (gc=False), like Entry: neither can hold
    a reference cycle (floats, strings, bytes and the entry's scalar usage). (A tuple of the
    two would be untracked too, but only by the first collection that looks at it.)"""

    expires: float
    entry: Entry


class MemoryBackend:
    name = "memory"
    local = True

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: OrderedDict[str, Slot] = OrderedDict()
        self.bytes = 0
        self.evictions = 0  # entries pushed out for room (not expiry)
        self.errors = 0  # (a dict does not fail)

    async def get(self, key: str) -> Entry | None:
        return self.read(key)

    def read(self, key: str) -> Entry | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if self.clock() >= found.expires:
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return found.entry

    def put(self, key: str, value: Entry, ttl: float) -> None:
        size = len(value.body) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self.entries:
            self._drop(key)
        now = self.clock()
        if self.bytes + size > self.max_bytes:
            self._make_room(size, now)
        self.entries[key] = Slot(now + ttl, value)
        self.bytes += size

    def _make_room(self, size: int, now: float) -> None:
        """Evict from the least recently used end until `size` more bytes fit."""
        while self.entries and self.bytes + size > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= len(old.entry.body) + ENTRY_OVERHEAD
            if old.expires > now:
                self.evictions += 1

    def settle(self, key: str, stored: Entry, ready: Entry | None, ttl: float) -> None:
        """`ready` in the place of `stored` (the entry just read for `key`, if it is still
        there), keeping its expiry and its place in the use order; None drops it."""
        found = self.entries.get(key)
        if found is None or found.entry is not stored:
            return
        if ready is None:
            self._drop(key)
            return
        self.entries[key] = Slot(found.expires, ready)
        self.bytes += len(ready.body) - len(stored.body)
        if self.bytes > self.max_bytes:  # (an answer is smaller than its stream, but nothing promises it)
            self.entries.move_to_end(key, last=False)  # this one out first, then any others
            self._make_room(0, self.clock())

    def _drop(self, key: str) -> None:
        self.bytes -= len(self.entries.pop(key).entry.body) + ENTRY_OVERHEAD

    def fill(self, key: str, entry: Entry | None, ttl: float, claimed: bool) -> None:
        if entry is not None:
            self.put(key, entry, ttl)

    async def claim_fresh(self, key: str, ttl: float) -> tuple[bool, Entry | None]:
        return True, None  # one process: its own single flight is the lock (never asked: `local`)

    async def await_fill(self, key: str, wait: float) -> Entry | None:
        return None  # (never asked: claim always succeeds)

    def usage(self) -> tuple[int, int]:
        return self.bytes, len(self.entries)

    async def aclose(self) -> None:
        pass

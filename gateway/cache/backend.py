"""Where cache entries live: the seam between the cache's hooks and a store (memory, Redis)."""
from __future__ import annotations

from typing import Protocol

from tollway.core.cache.entry import Entry


class CacheBackend(Protocol):
    name: str  # memory | redis: a metric label
    evictions: int  # memory: entries pushed out for room
    errors: int  # redis: failed calls
    local: bool  # True: `read` answers without waiting (memory), and no other process shares the entries

    def read(self, key: str) -> Entry | None:
        """`get` without waiting, for a local store (a network store returns None)."""

    async def get(self, key: str) -> Entry | None:
        """The stored entry, or None (absent, expired, unreadable, or the store is unreachable: a miss)."""

    def fill(self, key: str, entry: Entry | None, ttl: float, claimed: bool) -> None:
        """Store `entry` (None: nothing) for `ttl` seconds, then give back the fill lock if
        `claimed`. Never waits (a network store queues it); never raises."""

    def settle(self, key: str, stored: Entry, ready: Entry | None, ttl: float) -> None:
        """Replace `stored`, a stream's entry just read for `key`, with `ready`, its assembled
        answer, for the `ttl` seconds it has left; None: delete it (not a complete answer).
        Never waits; never raises."""

    async def claim_fresh(self, key: str, ttl: float) -> tuple[bool, Entry | None]:
        """Take the fill lock of `key` across replicas for at most `ttl` seconds: True if this
        process should fill it (always, for a store only one process sees; also when the
        store cannot say: calling upstream is the safe fallback). With it, the entry as it is
        now (None: none): the lock may be free because another process stored the answer and
        let go after the caller's read."""

    async def await_fill(self, key: str, wait: float) -> Entry | None:
        """The entry another process holds the fill lock for, once stored; None if its lock
        goes without one, or after `wait` seconds."""

    def usage(self) -> tuple[int, int]:
        """(bytes, entries) held, as far as this process knows (Redis: what it wrote)."""

    async def aclose(self) -> None:
        """Flush what is queued and release connections."""

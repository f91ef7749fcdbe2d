"""The shared cache store: entries in Redis, seen by every replica.

Entries are `<prefix>:<key>` with Redis's own expiry (PX). The fill lock of a key is
`<prefix>:lock:<key>` (SET NX PX): the replica that takes it calls upstream; the others poll
for the entry (one MGET of entry and lock per poll) until it lands, the lock goes, or
lock_ttl passes, and then call upstream themselves. Writes are queued as tasks: a request
never waits for one.

An outage never fails a request: a read that fails is a miss, a lock that cannot be taken is
"call upstream". The first failure of an incident is logged (and each counted); after it,
Redis is left alone for RETRY_INTERVAL so requests do not each wait out a timeout.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollway.core.cache.entry import Entry, decode, encode

log = logging.getLogger("tollway")
SOCKET_TIMEOUT = 0.25  # s: a lookup never waits longer than this for Redis
RETRY_INTERVAL = 1.0  # s: after a failure, requests skip Redis (miss) this long before it is tried again
POLL_INTERVAL = 0.05  # s: between looks for an entry another replica is filling
MAX_PENDING = 1024  # queued writes; past it, new ones are dropped (a cache may forget)
# Give a fill lock back only if it is still ours: one that outlived lock_ttl may be another replica's now.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# (the same compare-and-delete drops a stream's entry that proved no answer, and only that entry:
# a fresh one written meanwhile, by a no-cache refresh, stays)


class RedisBackend:
    name = "redis"
    local = False

    def __init__(self, url: str, prefix: str, client: aioredis.Redis | None = None) -> None:
        self.client = client or aioredis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, retry_on_timeout=False)
        self.prefix = prefix
        self.errors = 0  # failed calls (each a miss, a skipped write or an unlocked fill)
        self.bytes = self.entries = 0  # what this process wrote
        self.evictions = 0  # (Redis evicts by its own policy, unseen here)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        self._tokens: dict[str, bytes] = {}  # key -> the value of the fill lock this process holds
        self._token_base = os.urandom(8).hex()
        self._token_count = 0

    def _name(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def _lock(self, key: str) -> str:
        return f"{self.prefix}:lock:{key}"

    def read(self, key: str) -> Entry | None:
        return None  # (not local: `get` it)

    async def get(self, key: str) -> Entry | None:
        value = await self._call(lambda: self.client.get(self._name(key)), None)
        return decode(value) if isinstance(value, bytes) else None

    async def claim_fresh(self, key: str, ttl: float) -> tuple[bool, Entry | None]:
        self._token_count += 1
        token = f"{self._token_base}:{self._token_count}".encode()

        def lock_and_read() -> Awaitable[object]:  # one round trip: SET NX, then the entry as it is now
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self._lock(key), token, nx=True, px=int(ttl * 1000))
            pipe.get(self._name(key))
            return pipe.execute()

        found = await self._call(lock_and_read, None)
        if not isinstance(found, list) or len(found) != 2:
            return self._down_since is not None, None  # Redis cannot say: calling upstream is the safe fallback
        taken, value = found
        if taken:
            self._tokens[key] = token
        return bool(taken), decode(value) if isinstance(value, bytes) else None

    async def await_fill(self, key: str, wait: float) -> Entry | None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            found = await self._call(lambda: self.client.mget([self._name(key), self._lock(key)]), None)
            if not isinstance(found, list) or len(found) != 2:
                return None  # Redis is gone: call upstream
            value, lock = found
            if value is not None or lock is None:
                return decode(value) if isinstance(value, bytes) else None
        return None

    def fill(self, key: str, entry: Entry | None, ttl: float, claimed: bool) -> None:
        token = self._tokens.pop(key, None) if claimed else None  # (a lock not given back expires by itself)
        if (entry is None and token is None) or len(self._pending) >= MAX_PENDING or self._skipping():
            return
        task = asyncio.ensure_future(self._fill(key, encode(entry) if entry is not None else None, ttl, token))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def settle(self, key: str, stored: Entry, ready: Entry | None, ttl: float) -> None:
        if len(self._pending) >= MAX_PENDING or self._skipping() or (ready is not None and ttl <= 0):
            return
        value = encode(ready) if ready is not None else None
        task = asyncio.ensure_future(self._settle(key, value, ttl, encode(stored)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, key: str, value: bytes | None, ttl: float, stored: bytes) -> None:
        """The assembled answer over the stream's entry (if it is still there: XX), or the entry
        gone (if it is still that entry)."""
        name = self._name(key)
        await self._call(lambda: self.client.set(name, value, px=max(1, int(ttl * 1000)), xx=True)
                         if value is not None else self.client.eval(_RELEASE, 1, name, stored), None)

    async def _fill(self, key: str, value: bytes | None, ttl: float, token: bytes | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        if value is not None:
            pipe.set(self._name(key), value, px=max(1, int(ttl * 1000)))
        if token is not None:
            pipe.eval(_RELEASE, 1, self._lock(key), token)
        if await self._call(pipe.execute, None) is not None and value is not None:
            self.bytes += len(value)
            self.entries += 1

    async def _call(self, op: Callable[[], Awaitable[object]], fallback: object) -> object:
        """`op()`'s result, or `fallback` when Redis fails (counted; logged once per incident)
        or is being left alone after a failure."""
        if self._skipping():
            return fallback
        try:
            result = await op()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return fallback
        if self._down_since is not None:
            log.warning("response cache: redis answers again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
        return result

    def _skipping(self) -> bool:
        return self._down_since is not None and time.monotonic() < self._retry_at

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.error("response cache: redis unavailable (%s: %s); every lookup is a miss until it answers",
                      type(exc).__name__, exc)
        self._retry_at = now + RETRY_INTERVAL

    def usage(self) -> tuple[int, int]:
        return self.bytes, self.entries

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=SOCKET_TIMEOUT * 2)
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass

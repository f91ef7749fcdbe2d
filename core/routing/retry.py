"""Which target to try next, and how long to wait first (sans-IO).

Theory of operation
-------------------
A request gets an *order* of targets from the route (one per priority group, best first) and
a budget of `attempts`. Attempt k goes to order[k % len(order)]: first every fallback once,
with no wait (a different upstream owes us nothing), then around again. Going around means
re-trying a target that already failed, so it waits first: "full jitter" exponential backoff
(a uniform draw in [0, min(backoff_max, backoff_base * 2**round))), or longer if that target
said `retry-after`. Nothing starts after the deadline, and a wait that would cross it, or a
retry-after longer than `max_retry_after`, ends the walk: the client then gets the last error
with the upstream's retry-after, which is more useful than a gateway that sits on the request.

A target that *timed out* waiting for an answer (`timed_out=True`: first byte, idle or total;
not connect) is not tried again in this request: it already cost a whole timeout, and a
second try would most likely cost another while the client waits. The walk moves on to the
other fallbacks, and ends if none is left. (A connect timeout is short and often means one
dead replica of a pool, so it is retried like any other failure.)

A failure that was only a broken connection to one replica of a pool (`same_target=True`) is
retried on the same target right away and does not use the budget: the pool picks another
replica, so the client never sees a dead one. The caller bounds those by the pool's size.
"""
from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Generic, TypeVar

from tollway.core.config import Retry

T = TypeVar("T")


_NONE_SPENT: frozenset[int] = frozenset()


@dataclass(slots=True)
class AttemptPlan(Generic[T]):
    """The retry walk of one request. `next()` says what to do; `failed()` says how it went."""

    order: Sequence[T]
    policy: Retry
    started: float
    attempts: int = 0
    _again: bool = False  # the last failure asked for the same target, free of charge
    # target index -> its retry-after; None until a failure says one (most requests never fail)
    _waits: dict[int, float] | None = None
    _turn: int = 0  # position in the round-robin walk over `order`, skipped targets included
    # target indexes that timed out: never again (the shared empty set until one does)
    _spent: set[int] | frozenset[int] = _NONE_SPENT

    def next(self, now: float, draw: float) -> tuple[T, float] | None:
        """(target, seconds to wait before sending), or None when the walk is over."""
        if not self.order or now >= self.started + self.policy.deadline:
            return None
        if self._again:
            self._again = False
            return self.order[self._index()], 0.0
        if self.attempts >= self.policy.attempts or len(self._spent) == len(self.order):
            return None
        while self._turn % len(self.order) in self._spent:
            self._turn += 1
        index = self._turn % len(self.order)
        wait = self._wait(index, draw)
        if wait is None or now + wait >= self.started + self.policy.deadline:
            return None
        self.attempts += 1
        self._turn += 1
        return self.order[index], wait

    def failed(self, retry_after: float | None = None, same_target: bool = False, timed_out: bool = False) -> None:
        """Record that the attempt `next()` returned failed before any byte reached the client:
        the upstream asked for `retry_after` seconds, or only one replica broke (`same_target`),
        or it timed out waiting for the upstream (`timed_out`: not tried again)."""
        index = self._index()
        if retry_after is not None:
            if self._waits is None:
                self._waits = {}
            self._waits[index] = retry_after
        if timed_out:
            self._spent = self._spent | {index}
        self._again = same_target and not timed_out

    def _index(self) -> int:
        return (self._turn - 1) % len(self.order)

    def _wait(self, index: int, draw: float) -> float | None:
        lap = self._turn // len(self.order)
        if lap == 0:
            return 0.0
        asked = self._waits.get(index, 0.0) if self._waits is not None else 0.0
        if asked > self.policy.max_retry_after:
            return None
        return max(asked, backoff(self.policy, lap - 1, draw))


def backoff(policy: Retry, retry: int, draw: float) -> float:
    """Full-jitter wait before retry number `retry` (0-based), for a uniform `draw` in [0, 1)."""
    return draw * min(policy.backoff_max, policy.backoff_base * 2.0 ** retry)


def retry_after(headers: Sequence[tuple[str, str]], now_wall: float) -> float | None:
    """Seconds an upstream asked us to wait: `retry-after-ms`, else `retry-after` as seconds
    or an HTTP date (read against the wall clock `now_wall`). None if absent or unreadable."""
    found = {name.lower(): value for name, value in headers if name.lower() in ("retry-after", "retry-after-ms")}
    if "retry-after-ms" in found:
        seconds = _number(found["retry-after-ms"])
        if seconds is not None:
            return seconds / 1000
    value = found.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # a "-0000" zone: an HTTP date is always GMT, never the host's local time
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now_wall)
    except (TypeError, ValueError, OverflowError):  # (a year past what a datetime holds: unreadable)
        return None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value >= 0 and value == value else None

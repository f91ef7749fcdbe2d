"""The in-memory limiter's table of token buckets (pure-Python twin of `ext/_buckets.pyx`).

Theory of operation
-------------------
Each slot is a continuous-refill token bucket: `capacity`, `refill_per_sec`, the `level` at
the last update and the time of that update (`stamp`). Refill is computed lazily when a slot
is touched: ``level = min(capacity, level + (now - stamp) * refill)``. There are no windows,
so there is no burst at window edges. A slot with refill 0 is a gauge (concurrency): it is
taken on start and given back at the end.

Levels may go below zero: `take` charges unconditionally (settling usage above what was
reserved) and the debt is repaid by refill. Time never runs backwards in the math: a `now`
older than the slot's stamp refills nothing and leaves the stamp where it is.

`try_take` is all-or-nothing over several slots (a request must pass its request, token and
concurrency buckets together) and returns how long to wait when it cannot take. `reserve`
and `settle` are a whole limit decision and its correction in one call each: they take the
per-measure demand and the bucket's measure index, so the limiter's hot path makes one kernel
call instead of building an amounts list per request. Slots passed
to one `try_take` must be distinct. Slot ids are indexes; a bad one raises IndexError.
A `Gate` fixes the slots and measures of one limit plan, so the per-request calls carry only
the demand and the clock.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["BucketTable", "Gate"]


class BucketTable:
    """A growable table of token buckets addressed by slot id."""

    __slots__ = ("_capacity", "_refill", "_level", "_stamp")

    def __init__(self) -> None:
        self._capacity: list[float] = []
        self._refill: list[float] = []
        self._level: list[float] = []
        self._stamp: list[float] = []

    def __len__(self) -> int:
        return len(self._capacity)

    def add(self, capacity: float, refill_per_sec: float) -> int:
        """Add a full bucket; return its slot id. Refill 0 makes a gauge that never refills."""
        self._capacity.append(float(capacity))
        self._refill.append(float(refill_per_sec))
        self._level.append(float(capacity))
        self._stamp.append(-math.inf)  # full already, so no refill is owed before first use
        return len(self._capacity) - 1

    def reconfigure(self, slot: int, capacity: float, refill_per_sec: float) -> None:
        """Change a slot's limits. A bucket keeps its level (clamped to the new capacity) and
        refills at the new rate. A gauge that stays a gauge keeps what is in flight instead:
        its level is its free slots and never refills, so it moves by the capacity's change
        (kept as it was, a raised limit would never free the new slots)."""
        self._check(slot)
        capacity, refill_per_sec = float(capacity), float(refill_per_sec)
        if refill_per_sec == 0.0 and self._refill[slot] == 0.0:
            self._level[slot] = self._level[slot] + (capacity - self._capacity[slot])
        self._capacity[slot] = capacity
        self._refill[slot] = refill_per_sec
        self._level[slot] = min(self._level[slot], capacity)

    def try_take(self, slots: Sequence[int], amounts: Sequence[float], now: float) -> float:
        """Take `amounts[i]` from every `slots[i]`, or nothing.

        Returns 0.0 on success, else the seconds until all amounts would be available
        (math.inf if one can never be: amount above capacity, or a short gauge).
        Raises ValueError if the sequences differ in length, IndexError on a bad slot.
        """
        if len(slots) != len(amounts):
            raise ValueError("slots and amounts differ in length")
        amounts = [float(a) for a in amounts]  # as the compiled twin reads them: numbers, once
        wait = 0.0
        for slot, amount in zip(slots, amounts):
            self._check(slot)
            level = self._refill_to(slot, now)
            if level < amount:
                wait = max(wait, self._wait(slot, level, amount))
        if wait > 0.0:
            return wait
        for slot, amount in zip(slots, amounts):
            self._level[slot] -= amount
        return 0.0

    def reserve(self, slots: Sequence[int], measures: Sequence[int], demand: Sequence[float], now: float) -> float:
        """A whole limit decision in one call: take ``min(demand[measures[i]], capacity)``
        from every `slots[i]`, or nothing (a demand above a whole bucket is capped, so it is
        admitted from a full bucket instead of never).

        Returns 0.0 on success, else the seconds until it would fit (math.inf: never).
        Raises ValueError if slots and measures differ in length, IndexError on a bad slot.
        """
        if len(slots) != len(measures):
            raise ValueError("slots and measures differ in length")
        amounts = [_capped(float(demand[m]), self._capacity[self._checked(slot)]) for slot, m in zip(slots, measures)]
        return self.try_take(slots, amounts, now)

    def settle(self, slots: Sequence[int], measures: Sequence[int], reserved: Sequence[float],
               used: Sequence[float], now: float) -> None:
        """Correct a `reserve` by what was really used: each `slots[i]` is charged
        ``used[m] - min(reserved[m], capacity)`` with m = `measures[i]` (a negative charge
        gives back, capped at capacity; a positive one may leave debt; 0 touches nothing).
        Raises ValueError if slots and measures differ in length, IndexError on a bad slot."""
        if len(slots) != len(measures):
            raise ValueError("slots and measures differ in length")
        for slot, m in zip(slots, measures):
            delta = float(used[m]) - _capped(float(reserved[m]), self._capacity[self._checked(slot)])
            if delta > 0.0:
                self.take(slot, delta, now)
            elif delta < 0.0:
                self.give(slot, -delta, now)

    def levels(self, slots: Sequence[int], now: float) -> tuple[float, ...]:
        """The levels of `slots` at `now` (no state changes). Raises IndexError on a bad slot."""
        return tuple([self.level(slot, now) for slot in slots])

    def give(self, slot: int, amount: float, now: float) -> None:
        """Return tokens to a slot (capped at its capacity)."""
        self._check(slot)
        self._level[slot] = min(self._capacity[slot], self._refill_to(slot, now) + amount)

    def take(self, slot: int, amount: float, now: float) -> None:
        """Charge a slot unconditionally; its level may go negative (debt)."""
        self._check(slot)
        self._level[slot] = self._refill_to(slot, now) - amount

    def level(self, slot: int, now: float) -> float:
        """The slot's level at `now` (no state changes)."""
        self._check(slot)
        return self._refilled(slot, now)

    def seconds_until_full(self, slot: int, now: float) -> float:
        """Seconds until the slot is full again (0.0 if full, math.inf for a short gauge)."""
        self._check(slot)
        missing = self._capacity[slot] - self._refilled(slot, now)
        if missing <= 0.0:
            return 0.0
        rate = self._refill[slot]
        return missing / rate if rate > 0.0 else math.inf

    def capacity(self, slot: int) -> float:
        """The slot's capacity."""
        self._check(slot)
        return self._capacity[slot]

    def _check(self, slot: int) -> None:
        if not 0 <= slot < len(self._capacity):
            raise IndexError(f"no bucket slot {slot}")

    def _checked(self, slot: int) -> int:
        self._check(slot)
        return slot

    def _refilled(self, slot: int, now: float) -> float:
        level = self._level[slot]
        stamp = self._stamp[slot]
        rate = self._refill[slot]
        if now > stamp and rate > 0.0:
            return min(self._capacity[slot], level + (now - stamp) * rate)
        return level

    def _refill_to(self, slot: int, now: float) -> float:
        level = self._refilled(slot, now)
        self._level[slot] = level
        if now > self._stamp[slot]:
            self._stamp[slot] = now
        return level

    def _wait(self, slot: int, level: float, amount: float) -> float:
        rate = self._refill[slot]
        if amount > self._capacity[slot] or rate <= 0.0:
            return math.inf
        return (amount - level) / rate


def _capped(amount: float, capacity: float) -> float:
    """`amount`, at most `capacity`, compared as the kernel does (`a if a < cap else cap`): a
    NaN amount is the capacity. (`min(nan, cap)` keeps NaN, and a NaN level never refuses
    again: the twins would part, and the limit would be gone.)"""
    return amount if amount < capacity else capacity


class Gate:
    """The buckets of one limit plan in a table, fixed once: the slots and the measure each
    takes. A decision and its settle then pass only the demand and the clock, and a decision
    returns the levels the response headers show, all in one kernel call each.

    `demand`, `reserved` and `used` are per-measure tuples (tollway.core.limits.policy.reserve); bucket i
    takes ``min(demand[measures[i]], capacity)``, as in `BucketTable.reserve`."""

    __slots__ = ("table", "slots", "measures")

    def __init__(self, table: BucketTable, slots: Sequence[int], measures: Sequence[int]) -> None:
        """Raises ValueError if slots and measures differ in length, IndexError on a bad slot."""
        if len(slots) != len(measures):
            raise ValueError("slots and measures differ in length")
        for slot in slots:
            table.capacity(slot)  # raises IndexError for a slot the table does not have
        self.table, self.slots, self.measures = table, tuple(slots), tuple(measures)

    def reserve(self, demand: tuple[float, ...], now: float) -> tuple[float, ...] | None:
        """Take the demand from every bucket or nothing: the levels after, or None if it
        does not fit (then nothing was taken)."""
        if self.table.reserve(self.slots, self.measures, demand, now) != 0.0:
            return None
        return self.table.levels(self.slots, now)

    def settle(self, reserved: tuple[float, ...], used: tuple[float, ...], now: float) -> None:
        """Charge what was used minus what was reserved (see BucketTable.settle)."""
        self.table.settle(self.slots, self.measures, reserved, used, now)

    def levels(self, now: float) -> tuple[float, ...]:
        return self.table.levels(self.slots, now)

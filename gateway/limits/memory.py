"""The in-process bucket store: one `BucketTable` kernel, clocked by time.monotonic().

It is exact for one process and shares nothing: with `--workers N` each worker has its own
table, which is why `tollway serve` refuses that combination (see gateway/lifecycle/serve.py).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from tollway.core.kernels import BucketTable, Gate
from tollway.core.limits.policy import Bucket, LimitPolicy, Plan

# A freed slot waits this long before a new bucket takes it: a request admitted before its
# bucket went (a key revoked mid-stream) settles into the slot it was given, not a stranger's.
_QUARANTINE = 600.0


class MemoryBuckets:
    backend = "memory"
    settings: tuple[str, ...] = ("memory",)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._table = BucketTable()
        self._slot: dict[str, int] = {}  # bucket id -> slot; kept across reloads
        self._free: deque[tuple[float, int]] = deque()  # (when, slot) of buckets no policy has any more
        self._shapes: dict[str, Bucket] = {}  # bucket id -> the bucket its slot was last configured for
        self._clock = clock

    def configure(self, policy: LimitPolicy) -> None:
        """Give every bucket of `policy` a slot; an existing bucket keeps its level (a gauge, what
        it has in flight: see BucketTable.reconfigure). The slots
        of buckets `policy` no longer has are freed for new ones (keys made and revoked at run
        time would otherwise grow the table for ever)."""
        shapes, now = self._shapes, self._clock()
        for gone in [b for b in self._slot if b not in policy.buckets]:
            self._free.append((now, self._slot.pop(gone)))
            shapes.pop(gone, None)
        for bucket_id, bucket in policy.buckets.items():
            if shapes.get(bucket_id) is bucket:  # the same bucket a rebuild kept (LimitPolicy's `previous`)
                continue
            shapes[bucket_id] = bucket
            slot = self._slot.get(bucket_id)
            if slot is not None:
                self._table.reconfigure(slot, bucket.capacity, bucket.refill)
            elif self._free and self._free[0][0] < now - _QUARANTINE:  # a long-freed slot, made full
                slot = self._slot[bucket_id] = self._free.popleft()[1]
                self._table.reconfigure(slot, bucket.capacity, bucket.refill)
                self._table.give(slot, bucket.capacity - self._table.level(slot, now), now)
            else:
                self._slot[bucket_id] = self._table.add(bucket.capacity, bucket.refill)

    def bind(self, plan: Plan) -> Gate:
        """The plan's buckets in the table, for decide and settle."""
        return Gate(self._table, [self._slot[b.id] for b in plan.buckets], plan.measures)

    def decide(self, gate: Gate, demand: tuple[float, ...]) -> tuple[bool, tuple[float, ...]]:
        """Reserve `demand` in one kernel call; return (taken, levels after). Never None:
        this store always decides on its own."""
        now = self._clock()
        levels = gate.reserve(demand, now)
        return (True, levels) if levels is not None else (False, gate.levels(now))

    async def take(self, gate: Gate, amounts: tuple[float, ...]) -> tuple[bool, tuple[float, ...]]:
        """Take all amounts (per bucket) or none; return (taken, levels after)."""
        now = self._clock()
        taken = self._table.try_take(gate.slots, amounts, now) == 0.0
        return taken, gate.levels(now)

    def settle(self, gate: Gate, reserved: tuple[float, ...], used: tuple[float, ...]) -> None:
        """Charge used minus reserved (per measure) in one kernel call."""
        gate.settle(reserved, used, self._clock())

    async def levels(self, policy: LimitPolicy) -> dict[str, float]:
        now = self._clock()
        return {bucket_id: self._table.level(self._slot[bucket_id], now) for bucket_id in policy.buckets}

    async def aclose(self) -> None:
        return None

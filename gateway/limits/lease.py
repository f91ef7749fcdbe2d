"""Local quota leases for the Redis bucket store: decide most requests without a round trip.

Theory of operation
-------------------
A process *leases* quota from a Redis bucket in slices: Redis deducts the slice from the
bucket as if it had been used, and the process keeps it in a local `BucketTable` slot
(refill 0: it only holds what Redis granted). A request whose every bucket has enough leased
quota is decided here, in one kernel call, with no Redis call at all; the store tops a slice
up in the background (one batched call) when it runs below half. A request that does not fit
the lease goes to Redis, which reserves it and grants a fresh slice in the same script call.

Why this cannot admit much more than the limit: leased quota left Redis when it was granted,
so processes never spend the same quota twice. Settles land on the lease too (refunds refill
it up to MAX_HOLD_SLICES slices, the rest goes back to Redis; usage beyond a reservation is
charged to it, and a lease in debt asks Redis for the difference with its next request). What a
lease changes is *when* quota is spent:
quota leased before an interval can be spent in it, after Redis has refilled. So over any
interval of length T a bucket admits at most

    capacity * (1 + T / window)  +  N * MAX_HOLD_SLICES * slice

for N processes, with ``slice <= capacity * LEASE_FRACTION``. Conversely a process can be
refused while others hold unused leases (at most the same amount); every holding goes back to
Redis after LEASE_TTL, and whatever a process holds at shutdown is returned.

Which buckets lease: gauges (`concurrent`) never do (a slot held here would be a slot another
process cannot use), nor do buckets too small for a slice of LEASE_MIN_REQUESTS requests
(capacity * LEASE_FRACTION below that many times the request's amount): those are decided by
Redis every time, exactly, as before leasing. A plan with any such bucket is decided by Redis.

Slots follow the config: those of buckets a reload (a run-time key revoked) took away are freed
and, after LEASE_QUARANTINE, given to new buckets, as the memory store does.

Slices adapt to demand: a slice that lasted less than LEASE_TARGET / 2 doubles, one that
lasted more than 2 * LEASE_TARGET halves, so each busy bucket is topped up about
1 / LEASE_TARGET times a second per process, whatever its traffic.
"""
from __future__ import annotations

from collections import deque

from tollway.core.kernels import BucketTable, Gate
from tollway.core.limits.policy import Bucket, Plan

LEASE_FRACTION = 1 / 16   # largest slice, as a share of the bucket's capacity
LEASE_MIN_REQUESTS = 4    # a bucket leases only if its largest slice holds this many requests
LEASE_TARGET = 0.1        # s: how long a slice should last
MAX_HOLD_SLICES = 2       # refunds kept here up to this many slices; the rest goes to Redis
LEASE_TTL = 1.0           # s: every holding is returned to Redis this often
# A slot freed by a change of config waits this long before a new bucket takes it: a request
# admitted before its bucket went (a key revoked mid-stream) settles into the slot it was given,
# which meanwhile still returns what it holds to that bucket, not to a stranger's.
LEASE_QUARANTINE = 600.0


class LeaseBook:
    """The quota this process holds, per bucket, and how big its next slice should be."""

    def __init__(self) -> None:
        self.table = BucketTable()
        self._slot: dict[str, int] = {}            # bucket id -> local slot
        self.buckets: list[Bucket] = []              # by slot
        self.slice: list[float] = []                 # by slot: the next grant's size
        self.seen: list[float] = []                  # by slot: Redis's level after our last call
        self._granted_at: list[float] = []           # by slot: when the last grant came
        self._asked: list[float] = []                # by slot: asked of Redis, not yet answered
        self.pending: set[int] = set()               # slots with a top-up on its way
        self._free: deque[tuple[float, int]] = deque()  # (when, slot) of buckets no policy has any more

    def gate(self, plan: Plan, now: float) -> Gate | None:
        """The plan's local slots as a Gate, or None if the plan cannot lease (it has a gauge)."""
        if any(b.window == 0.0 for b in plan.buckets):
            return None
        return Gate(self.table, [self._slot_of(b, now) for b in plan.buckets], plan.measures)

    def decide(self, gate: Gate, demand: tuple[float, ...]) -> tuple[tuple[float, ...], list[int]] | None:
        """Take `demand` from the leases, all or nothing. Returns (levels as the client should
        see them, slots to top up), or None if the leases do not cover it."""
        held = gate.reserve(demand, 0.0)
        if held is None:
            return None
        seen, sizes, pending = self.seen, self.slice, self.pending
        slots = gate.slots
        low = [s for s, h in zip(slots, held) if h * 2.0 < sizes[s] and s not in pending and self._live(s)]
        return tuple([h + seen[s] for s, h in zip(slots, held)]), low

    def wants(self, slots: tuple[int, ...], amounts: tuple[float, ...]) -> tuple[float, ...] | None:
        """What to lease along with a reservation Redis makes: per bucket, the top-up to a
        full slice; None when some bucket is too small to lease for requests this big."""
        if not all(self._live(s) for s in slots):
            return None
        held = self.table.levels(slots, 0.0)
        out = []
        for s, amount, h in zip(slots, amounts, held):
            largest = self.buckets[s].capacity * LEASE_FRACTION
            if largest < LEASE_MIN_REQUESTS * amount:
                return None
            size = self.slice[s] = min(largest, max(self.slice[s], LEASE_MIN_REQUESTS * amount))
            out.append(max(size - h - self._asked[s], 0.0))
        return self._asking(slots, out)

    def top_up(self, slots: list[int]) -> tuple[float, ...]:
        """The amounts to ask Redis for to bring `slots` back to a full slice."""
        held = self.table.levels(slots, 0.0)
        self.pending.update(slots)
        return self._asking(slots, [max(self.slice[s] - h - self._asked[s], 0.0) for s, h in zip(slots, held)])

    def granted(self, slots: tuple[int, ...] | list[int], wants: tuple[float, ...], grants: tuple[float, ...],
                levels: tuple[float, ...], now: float) -> list[tuple[Bucket, float]]:
        """Keep what Redis granted (up to MAX_HOLD_SLICES slices) and its levels; resize each
        slice by how long the last one lasted. Returns (bucket, excess) to give back to Redis."""
        excess = []
        for s, want, grant, level in zip(slots, wants, grants, levels):
            self.pending.discard(s)
            self._asked[s] = max(self._asked[s] - want, 0.0)
            self.seen[s] = level
            if grant <= 0.0:
                continue
            room = max(MAX_HOLD_SLICES * self.slice[s] - self.table.level(s, 0.0), 0.0)
            if grant > room:
                excess.append((self.buckets[s], grant - room))
                grant = room
            self.table.give(s, grant, 0.0)
            self._resize(s, now)
        return excess

    def failed(self, slots: tuple[int, ...] | list[int], wants: tuple[float, ...]) -> None:
        """Redis did not answer a lease request: forget it, so the next one asks again."""
        for s, want in zip(slots, wants):
            self.pending.discard(s)
            self._asked[s] = max(self._asked[s] - want, 0.0)

    def _asking(self, slots: tuple[int, ...] | list[int], wants: list[float]) -> tuple[float, ...]:
        for s, want in zip(slots, wants):
            self._asked[s] += want
        return tuple(wants)

    def _resize(self, s: int, now: float) -> None:
        lasted, self._granted_at[s] = now - self._granted_at[s], now
        largest = self.buckets[s].capacity * LEASE_FRACTION
        if lasted < LEASE_TARGET / 2:
            self.slice[s] = min(self.slice[s] * 2.0, largest)
        elif LEASE_TARGET * 2 < lasted < float("inf"):  # (the first grant has nothing to compare)
            self.slice[s] = self.slice[s] / 2.0

    def settle(self, gate: Gate, reserved: tuple[float, ...], used: tuple[float, ...]) -> list[tuple[Bucket, float]]:
        """Settle on the leases in one kernel call: refunds refill them, usage beyond the
        reservation is charged to them (a lease in debt asks Redis for more on its next
        request). Returns (bucket, excess) held beyond MAX_HOLD_SLICES slices, to give back."""
        gate.settle(reserved, used, 0.0)
        sizes = self.slice
        return [(self.buckets[s], self._shed(s, h)) for s, h in zip(gate.slots, gate.levels(0.0))
                if h > MAX_HOLD_SLICES * sizes[s]]

    def _shed(self, s: int, held: float) -> float:
        excess = held - MAX_HOLD_SLICES * self.slice[s]
        self.table.take(s, excess, 0.0)
        return excess

    def surrender(self) -> list[tuple[Bucket, float]]:
        """Empty every holding; return (bucket, amount) to give back to Redis (negative: a
        debt to charge there)."""
        out = []
        table = self.table
        slots = [*self._slot.values(), *[s for _, s in self._free]]  # (a freed slot may get a late settle)
        for s, held in zip(slots, table.levels(slots, 0.0)):  # one kernel call for them all
            if held != 0.0:
                table.take(s, held, 0.0)
                out.append((self.buckets[s], held))
        return out

    def reconfigure(self, buckets: dict[str, Bucket], now: float) -> None:
        """Adopt new capacities; slots of buckets that changed start over, and those of buckets
        that went away are freed, for new buckets after LEASE_QUARANTINE (keys made and revoked at
        run time would otherwise grow the table, and what surrender() walks, for ever). The
        store gives every holding back first."""
        for bucket_id, s in list(self._slot.items()):
            new = buckets.get(bucket_id)
            if new is None:
                del self._slot[bucket_id]
                self._free.append((now, s))
            elif new != self.buckets[s]:
                self.buckets[s] = new
                self.table.reconfigure(s, new.capacity, 0.0)
                self.slice[s] = 0.0

    def _live(self, s: int) -> bool:
        """Whether slot `s` still belongs to a bucket of the config: a freed one (reached through a
        plan of an old config) takes no more grants, so it holds nothing beyond late settles."""
        return self._slot.get(self.buckets[s].id) == s

    def _slot_of(self, bucket: Bucket, now: float) -> int:
        s = self._slot.get(bucket.id)
        if s is not None:
            return s
        table = self.table
        if self._free and self._free[0][0] <= now - LEASE_QUARANTINE:  # a long-freed slot, emptied
            s = self._slot[bucket.id] = self._free.popleft()[1]
            table.reconfigure(s, bucket.capacity, 0.0)
            table.take(s, table.level(s, 0.0), 0.0)
            self.buckets[s], self.slice[s], self.seen[s] = bucket, 0.0, bucket.capacity
            self._granted_at[s], self._asked[s] = float("-inf"), 0.0
            self.pending.discard(s)
            return s
        s = self._slot[bucket.id] = table.add(bucket.capacity, 0.0)
        table.take(s, bucket.capacity, 0.0)  # a new slot holds nothing yet
        self.buckets.append(bucket)
        self.slice.append(0.0)
        self.seen.append(bucket.capacity)
        self._granted_at.append(float("-inf"))
        self._asked.append(0.0)
        return s

"""Passive health: outlier detection with a circuit breaker per upstream member.

Theory of operation
-------------------
A *member* is anything the gateway can route to and that fails on its own: a provider that is
the target of a route, or one endpoint of a self-hosted pool. Each member has a small state
machine, fed with the outcome of real requests (no probes of our own):

    state      event                              next state
    ---------  ---------------------------------  ------------------------------------------
    healthy    success                            healthy (failure count reset)
    healthy    failure, count < threshold         healthy
    healthy    failure, count reaches threshold   ejected until now + cool_down * 2**(n-1)
    ejected    clock passes the cool-down         probing (one trial request is let through)
    probing    success                            healthy
    probing    failure                            ejected again, for twice as long

`n` counts consecutive ejections and is forgotten after a success, so a member that flaps is
kept out longer each time (capped at max_cool_down), while one that recovers comes back by
itself. Nothing here reads the clock: every call takes `now` (monotonic seconds).
"""
from __future__ import annotations

from dataclasses import dataclass

from tollway.core.config import OutlierDetection

HEALTHY, EJECTED, PROBING = "healthy", "ejected", "probing"


@dataclass
class MemberHealth:
    """One member's breaker. Mutable; owned by one event loop, so no locking."""

    policy: OutlierDetection
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    probe_in_flight: bool = False

    def state(self, now: float) -> str:
        """HEALTHY, EJECTED or PROBING at time `now`."""
        if self.ejected_until == 0.0:
            return HEALTHY
        return EJECTED if now < self.ejected_until else PROBING

    def available(self, now: float) -> bool:
        """Whether a request may go here now: healthy, or the one probe after a cool-down."""
        state = self.state(now)
        return state == HEALTHY or (state == PROBING and not self.probe_in_flight)

    def begin(self, now: float) -> None:
        """Note that a request is being sent; a probing member then admits no other one."""
        if self.state(now) == PROBING:
            self.probe_in_flight = True

    def abandon(self) -> None:
        """A request that says nothing about the member ended (cancelled, the client's own
        mistake, a busy 429): if it was the probe, the next request may probe instead. Without
        this a probing member whose probe was cancelled would never be tried again."""
        self.probe_in_flight = False

    def success(self) -> None:
        self.failures = self.ejections = 0
        self.ejected_until = 0.0
        self.probe_in_flight = False

    def failure(self, now: float) -> bool:
        """Record a failed request. Returns True when this failure ejected the member."""
        self.probe_in_flight = False
        self.failures += 1
        probing = self.state(now) == PROBING
        if not probing and (self.ejected_until or self.failures < self.policy.consecutive_failures):
            return False
        self.ejections += 1
        cool_down = self.policy.cool_down * 2 ** (self.ejections - 1)
        self.ejected_until = now + min(cool_down, self.policy.max_cool_down)
        return True


class HealthBoard:
    """The breakers of a set of members, by name; unknown members are healthy."""

    def __init__(self, policy: OutlierDetection) -> None:
        self.policy = policy
        self._members: dict[str, MemberHealth] = {}

    def member(self, name: str) -> MemberHealth:
        found = self._members.get(name)
        if found is None:
            found = self._members[name] = MemberHealth(self.policy)
        return found

    def available(self, name: str, now: float) -> bool:
        found = self._members.get(name)
        return found is None or found.available(now)

    def states(self, now: float) -> dict[str, str]:
        """Every known member's state, for metrics."""
        return {name: m.state(now) for name, m in self._members.items()}

    def forget(self, keep: set[str]) -> None:
        """Drop members that no longer exist (after a reload or a DNS change)."""
        for name in [n for n in self._members if n not in keep]:
            del self._members[name]

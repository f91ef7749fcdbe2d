"""The routing table: public model name -> the targets that can serve it.

Exact names win over regex matches (`match:`), which are tried in config order. Within a
route, targets are grouped by `priority` (0 first); the gateway walks the groups in order for
fallback, and inside a group picks by `weight` at random. `pick()` takes the random draw as
an argument, so tests decide it.

Passive health enters through `attempt_order()`: a target the caller says is unavailable
(ejected by outlier detection) is skipped inside its group, and the weighted pick is made
among the rest, so a 90/10 split whose 90 is ejected sends everything to the 10. A group with
no available target is not dropped but moved to the end of the order: a request still gets a
last-resort try rather than an error the gateway made up itself.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tollway.core.config import Config, Model, Target


@dataclass(frozen=True)
class Route:
    name: str
    model: Model
    # Target groups in fallback order; each group is (targets, cumulative weights).
    groups: tuple[tuple[tuple[Target, ...], tuple[float, ...]], ...] = field(default=())
    # The whole attempt order of a route with one target, else (): the common route's order
    # needs no random draw and no health walk (see attempt_order).
    single: tuple[Target, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if len(self.groups) == 1 and len(self.groups[0][0]) == 1:
            object.__setattr__(self, "single", self.groups[0][0])  # (frozen: set once, here)

    def upstream_model(self, target: Target, requested: str) -> str:
        """The name to send upstream: the target's override, else what the client asked."""
        return target.model or requested

    def pick(self, group: int, draw: float) -> Target:
        """The target of `group` chosen by weight, for a uniform `draw` in [0, 1)."""
        targets, cumulative = self.groups[group]
        total = cumulative[-1]
        if total <= 0:
            return targets[0]
        point = draw * total
        for target, edge in zip(targets, cumulative):
            if point < edge:
                return target
        return targets[-1]

    def fallback_order(self, draw: float) -> list[Target]:
        """One target per priority group, best first: the order to try on failure."""
        return [self.pick(i, draw) for i in range(len(self.groups))]

    def attempt_order(self, draw: float, available: Callable[[str], bool]) -> list[Target]:
        """Like fallback_order, but each group picks by weight among targets whose provider
        is `available`; groups with none go last, picked as if all were available."""
        if len(self.groups) == 1 and len(self.groups[0][0]) == 1:
            return [self.groups[0][0][0]]  # one target: it is the order, available or not
        healthy, last_resort = [], []
        for i, (targets, _) in enumerate(self.groups):
            usable = tuple(t for t in targets if available(t.provider))
            if not usable:
                last_resort.append(self.pick(i, draw))
            elif len(usable) == len(targets):
                healthy.append(self.pick(i, draw))
            else:
                healthy.append(_weighted(usable, draw))
        return healthy + last_resort


def _weighted(targets: tuple[Target, ...], draw: float) -> Target:
    total = sum(t.weight for t in targets)
    point, running = draw * total, 0.0
    for t in targets:
        running += t.weight
        if point < running:
            return t
    return targets[0] if total <= 0 else targets[-1]


def _route(model: Model) -> Route:
    by_priority: dict[int, list[Target]] = {}
    for t in model.targets:
        by_priority.setdefault(t.priority, []).append(t)
    groups = []
    for priority in sorted(by_priority):
        targets = tuple(by_priority[priority])
        running, cumulative = 0.0, []
        for t in targets:
            running += t.weight
            cumulative.append(running)
        groups.append((targets, tuple(cumulative)))
    return Route(model.name, model, tuple(groups))


class RouteTable:
    def __init__(self, config: Config) -> None:
        self._exact = {m.name: _route(m) for m in config.models}
        self._patterns = [(re.compile(m.match), self._exact[m.name]) for m in config.models if m.match]

    def resolve(self, name: str) -> Route | None:
        """The route serving public model `name`, or None if no model matches."""
        route = self._exact.get(name)
        if route is not None:
            return route
        if not name.strip("."):  # "." or "..": sent upstream in a URL path (Bedrock, Azure, Gemini), a dot
            return None          # segment would climb out of it, which no client may choose (a loose `match:`)
        for pattern, candidate in self._patterns:
            if pattern.fullmatch(name):
                return candidate
        return None

    def names(self) -> list[str]:
        return list(self._exact)

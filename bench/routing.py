"""Per-request cost of the routing decisions (core only, no I/O): run `python -m bench.routing`.

- route: attempt order (weighted pick, health filter) + retry plan + breaker bookkeeping,
  what Proxy.forward adds to every request;
- pool pick: least_queue scoring of 2 replicas plus prefix-affinity hashing of a prompt with a
  4 KB system message, what a tier-two pool adds per attempt.
"""
from __future__ import annotations

import random
import time
import timeit

from tollway.core.config import loads
from tollway.core.routing.health import HealthBoard
from tollway.core.routing.picker import Candidate, PrefixIndex, pick_least_queue
from tollway.core.routing.replica_load import ReplicaLoad
from tollway.core.routing.retry import AttemptPlan
from tollway.core.routing.table import RouteTable

CONFIG = loads("""
providers: [{name: a, schema: fake}, {name: b, schema: fake}]
models: [{name: m, targets: [{provider: a, weight: 90}, {provider: b, weight: 10}]}]
""")
BODY = b'{"model":"m","messages":[{"role":"system","content":"' + b"x" * 4000 + b'"},{"role":"user","content":"hi"}]}'


def route_cost(n: int = 200_000) -> float:
    route, board, policy = RouteTable(CONFIG).resolve("m"), HealthBoard(CONFIG.routing.outlier_detection), CONFIG.routing.retry
    assert route is not None

    def one() -> None:
        now = time.monotonic()
        plan = AttemptPlan(route.attempt_order(random.random(), lambda name: board.available(name, now)), policy, now)
        step = plan.next(time.monotonic(), random.random())
        assert step is not None
        member = board.member(step[0].provider)
        member.begin(now)
        member.success()

    return timeit.timeit(one, number=n) / n


def pick_cost(n: int = 50_000) -> float:
    index = PrefixIndex()
    candidates = [Candidate(ReplicaLoad(1, 2, 0.3)), Candidate(ReplicaLoad(0, 2, 0.5))]

    def one() -> None:
        blocks = index.blocks(BODY)
        index.matches(blocks)
        index.record(blocks, "e%d" % pick_least_queue(candidates, random.random(), 0))

    return timeit.timeit(one, number=n) / n


if __name__ == "__main__":
    print(f"route + retry plan + breaker per request: {route_cost() * 1e6:.2f} us")
    print(f"pool pick with a 4 KB prompt prefix:      {pick_cost() * 1e6:.2f} us")

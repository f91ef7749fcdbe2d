"""Choosing one endpoint of a self-hosted pool (sans-IO: load snapshots and a random draw in).

`least_queue` scores endpoints the way the Gateway API Inference Extension's endpoint picker
does, as a weighted sum of scorers, each in [0, 1]:
- queue: fewer waiting requests is better: 1 - waiting / (the longest queue among candidates),
  so an empty queue scores 1 and the longest scores 0;
- kv_cache: 1 - KV-cache use;
- prefix: the share of this prompt's leading blocks the endpoint served last (its prefix cache
  likely still holds them), counted only while the endpoint is not overloaded, so affinity
  never piles work onto a replica that is already behind.
An endpoint not scraped yet scores a neutral 0.5 on queue and kv_cache. Endpoints that are
ejected or failed their last scrape are left out, unless every endpoint is (then all are
candidates: a guess beats refusing the request). Ties go to the endpoint with fewer requests
in flight from this gateway, then to the draw.

`least_inflight` and `round_robin` are the simple alternatives; all three share one signature
so a pool calls `PICKERS[policy]` and never branches on the policy's name.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tollway.core.routing.replica_load import ReplicaLoad

NEUTRAL = 0.5
_EPSILON = 1e-9


@dataclass(frozen=True)
class Candidate:
    """What the picker knows about one endpoint at the moment of choosing."""

    load: ReplicaLoad | None  # None: not scraped (yet)
    in_flight: int = 0  # requests this gateway has sent there and not finished
    available: bool = True  # not ejected, last scrape answered
    prefix_match: float = 0.0  # share of this prompt's prefix blocks it served last, 0..1


@dataclass(frozen=True)
class ScoreWeights:
    queue: float = 2.0
    kv_cache: float = 2.0
    prefix: float = 3.0
    overloaded_waiting: float = 8.0  # at or above this queue, prefix affinity no longer counts
    overloaded_kv_cache: float = 0.9


def pick_least_queue(candidates: Sequence[Candidate], draw: float, turn: int,
                     weights: ScoreWeights = ScoreWeights()) -> int:
    """Index of the best-scoring candidate. Raises ValueError on an empty sequence."""
    pool = _eligible(candidates)
    loads = [candidates[i].load for i in pool]
    queues = [load.waiting for load in loads if load is not None and load.waiting is not None]
    longest = max(queues, default=0.0)
    scores = {i: _score(candidates[i], longest, weights) for i in pool}
    return _best(scores, candidates, draw)


def pick_least_inflight(candidates: Sequence[Candidate], draw: float, turn: int) -> int:
    """Index of the candidate with the fewest requests in flight, ties to the draw."""
    scores = {i: -float(candidates[i].in_flight) for i in _eligible(candidates)}
    return _best(scores, candidates, draw)


def pick_round_robin(candidates: Sequence[Candidate], draw: float, turn: int) -> int:
    """The `turn`-th eligible candidate, cycling."""
    pool = _eligible(candidates)
    return pool[turn % len(pool)]


Pick = Callable[[Sequence[Candidate], float, int], int]
PICKERS: dict[str, Pick] = {
    "least_queue": pick_least_queue,
    "least_inflight": pick_least_inflight,
    "round_robin": pick_round_robin,
}


def _eligible(candidates: Sequence[Candidate]) -> list[int]:
    if not candidates:
        raise ValueError("no endpoints to pick from")
    ok = [i for i, c in enumerate(candidates) if c.available]
    return ok or list(range(len(candidates)))


def _score(c: Candidate, longest: float, w: ScoreWeights) -> float:
    load = c.load or ReplicaLoad()
    if load.waiting is None:
        queue = NEUTRAL
    else:
        queue = 1.0 if longest < _EPSILON else 1.0 - max(load.waiting, 0.0) / longest
    kv = NEUTRAL if load.kv_cache is None else 1.0 - min(max(load.kv_cache, 0.0), 1.0)
    overloaded = (load.waiting or 0.0) >= w.overloaded_waiting or (load.kv_cache or 0.0) >= w.overloaded_kv_cache
    prefix = 0.0 if overloaded else c.prefix_match
    return w.queue * queue + w.kv_cache * kv + w.prefix * prefix


def _best(scores: dict[int, float], candidates: Sequence[Candidate], draw: float) -> int:
    # (a score that is no number, from load data no replica should send, ranks with the rest:
    # the pick must never fail on what a replica reports)
    finite = {i: s if math.isfinite(s) else 0.0 for i, s in scores.items()}
    top = max(finite.values())
    tied = [i for i, s in finite.items() if s >= top - _EPSILON]
    fewest = min(candidates[i].in_flight for i in tied)
    tied = [i for i in tied if candidates[i].in_flight == fewest]
    return tied[min(int(draw * len(tied)), len(tied) - 1)]


class PrefixIndex:
    """Which endpoint last served each prompt prefix, by chained block hashes, LRU-bounded.

    The prompt is the request body from its `messages`/`prompt`/`input` key on, cut into
    `block`-byte blocks; block i's hash covers blocks 0..i, so an endpoint owning block i has
    seen the whole prefix up to it. Only the first `max_blocks` blocks are hashed: that is
    where shared system prompts and few-shot examples live, and it bounds the cost per request.
    """

    _STARTS = (b'"messages"', b'"prompt"', b'"input"')

    def __init__(self, capacity: int = 65536, block: int = 256, max_blocks: int = 64) -> None:
        self.capacity, self.block, self.max_blocks = capacity, block, max_blocks
        self._owner: OrderedDict[int, str] = OrderedDict()

    def blocks(self, body: bytes) -> list[int]:
        """The chained hashes of the prompt's full blocks (a partial last block is left out)."""
        start = min((i for i in (body.find(s) for s in self._STARTS) if i >= 0), default=0)
        hashes, running = [], 0
        end = min(len(body), start + self.block * self.max_blocks)
        for offset in range(start, end - self.block + 1, self.block):
            running = hash((running, body[offset:offset + self.block]))
            hashes.append(running)
        return hashes

    def matches(self, blocks: Sequence[int]) -> dict[str, float]:
        """Endpoint -> share of `blocks` (a leading run) it served last."""
        found: dict[str, float] = {}
        for i, h in enumerate(blocks):
            owner = self._owner.get(h)
            if owner is None:
                break
            found[owner] = (i + 1) / len(blocks)
        return found

    def record(self, blocks: Sequence[int], endpoint: str) -> None:
        """Note that `endpoint` now serves (and caches) this prompt's prefix."""
        for h in blocks:
            self._owner[h] = endpoint
            self._owner.move_to_end(h)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def forget(self, endpoint: str) -> None:
        """Drop an endpoint that left the pool, so no prompt is sent after it."""
        for h in [h for h, owner in self._owner.items() if owner == endpoint]:
            del self._owner[h]

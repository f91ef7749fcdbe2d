"""The response cache as pipeline hooks (tollway.gateway.pipeline, docs/cache.md).

    before_upstream  lookup: the rule (key → team → model), cache-control, the key; a hit is
                     kept on the request's CacheState, which `admission.forward` asks to answer
                     instead of calling upstream; concurrent misses join one flight
    (per chunk)      capture: the client bytes of a streamed miss (bounded), hooked by
                     `admission.forward` on that request alone, after the other chunk hooks
    on_answer        capture: the client bytes of a non-stream miss
    after_response   store: a complete, successful answer becomes an entry; the flight lands

The hooks run after the guardrails' and the plugins' (the app joins them last), so the key is
over the body they masked or rewrote, and what is stored is what the client got. With no
`cache:` that anyone opted into, the cache plugs nothing in: the request path is unchanged.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import msgspec

from tollway.core.cache import entry as entries
from tollway.core.cache.assemble import answer_of
from tollway.core.cache.key import CACHED_APIS, cache_key, config_version, read, with_headers
from tollway.core.cache.replay import replay
from tollway.core.cache.rules import CacheRules, Rule
from tollway.core.cache.settings import CacheStore, seconds
from tollway.core.config import Config
from tollway.ext.usage import Usage
from tollway.gateway.cache.backend import CacheBackend
from tollway.gateway.cache.flight import SingleFlight
from tollway.gateway.cache.memory import MemoryBackend
from tollway.gateway.downstream.watchdog import ANSWERED
from tollway.gateway.pipeline import Pipeline
from tollway.gateway.proxy import SSE_HEADERS, ClientGone, ClientStream
from tollway.gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from granian.rsgi import HTTPProtocol

    from tollway.gateway.admission import Admitted
    from tollway.gateway.exchange import Exchange

HEADER = "x-tollway-cache"
HIT, MISS, BYPASS = "hit", "miss", "bypass"
STREAM_CAPTURE_FACTOR = 8  # a stream's SSE text may be this many times max_entry_bytes (its JSON is smaller)
MEMO_ENTRIES, MEMO_BODY_BYTES = 1024, 4096  # keys remembered by body: at most ~4 MB of bodies
_JSON = ("content-type", "application/json")
_NOTHING = Usage()


class CacheCounts:
    """What the cache did, into the gateway's metrics (tollway_cache_requests, _events): counters
    summed over the workers with --workers N, like the other per-request series."""

    __slots__ = ("requests", "events")

    def __init__(self, metrics: Metrics | None = None) -> None:
        metrics = metrics or Metrics()
        self.requests, self.events = metrics.cache_requests, metrics.cache_events

    def count(self, model: str, outcome: str) -> None:
        self.requests.add((model, outcome), 1)

    def joined(self) -> None:
        """A miss answered by an identical request's upstream call instead of its own."""
        self.events.add(("single_flight_join",), 1)

    def stored(self) -> None:
        self.events.add(("store",), 1)


class CacheState:
    """The cache's view of one request (Exchange.cache)."""

    __slots__ = ("rule", "outcome", "key", "entry", "storing", "leader", "claimed", "stream", "include_usage",
                 "answer", "chunks", "size", "limit", "rendered")

    def __init__(self, rule: Rule, stream: bool, include_usage: bool, limit: int = 0) -> None:
        self.rule = rule
        self.outcome = BYPASS
        self.key: str | None = None  # None: neither read nor written
        self.entry: entries.Entry | None = None  # a hit
        self.storing = False  # the answer may become an entry
        self.leader = False  # this request leads the key's flight (lands it when finished)
        self.claimed = False  # ... and holds its cross-replica fill lock
        self.stream, self.include_usage = stream, include_usage
        self.answer: bytes | None = None  # a non-stream miss's client bytes
        self.chunks: list[bytes] = []  # a streamed miss's client bytes
        self.size = 0
        self.limit = limit  # the stream bytes it may hold (past them it is not stored)
        self.rendered: bytes | None = None  # a hit served as a stream: its SSE bytes (rendered at the lookup)

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def capture(self, ex: Exchange, out: bytes) -> bytes:
        """A per-chunk hook of a streamed miss: keep the bytes the client got (bounded)."""
        if self.storing:
            self.size += len(out)
            if self.size > self.limit:
                self.storing, self.chunks = False, []
            else:
                self.chunks.append(out)
        return out

    async def capture_after(self, ex: Exchange, out: bytes) -> bytes:
        """`capture` as the async hook that runs after the plugins' on_chunk (which may rewrite)."""
        return self.capture(ex, out)

    @property
    def header(self) -> tuple[str, str]:
        return HEADER, self.outcome

    def headed(self, headers: list[tuple[str, str]]) -> bool:
        """Add the cache's header to the response's; True on a hit (then `serve` answers)."""
        headers.append((HEADER, self.outcome))
        return self.entry is not None

    async def serve(self, ex: Exchange, proto: HTTPProtocol, headers: list[tuple[str, str]]) -> None:
        """Send the stored answer, as JSON or as a stream as the request asked, with its age."""
        found = self.entry
        assert found is not None
        headers.append(("age", str(max(0, int(time.time() - found.created)))))
        ex.usage = ex.priced = found.usage
        ex.cost_usd, ex.upstream_model, ex.status = 0.0, found.upstream_model, 200
        if self.rendered is not None:
            ex.stream = True
            body = self.rendered
            out = ClientStream(proto.response_stream(200, [*SSE_HEADERS, *headers]))
            ex.first_byte = time.perf_counter()
            try:
                await out.send(body)
            except ClientGone:  # left before its answer went out: as the relay records it
                ex.error_type = "client_closed"
            finally:
                out.close()
        else:
            ex.first_byte = time.perf_counter()
            proto.response_bytes(200, [_JSON, *headers, ("x-tollway-cost-usd", "0")], found.body)
        ex.phase = ANSWERED


_STREAMED = frozenset(("chat", "completions", "responses", "messages"))
# What rendering a stored answer as a stream raises when the answer (an upstream's JSON, checked
# only as far as `storable_json` reads it) has a field of a type the replay does not expect.
_UNREPLAYABLE = (ValueError, TypeError, KeyError, AttributeError, IndexError)
REPLAYS_KEPT, REPLAY_BODY_BYTES = 128, 16384  # streams rendered from small entries, kept for their next hit


class Replays:
    """Streams rendered from stored answers, kept while they are among the last REPLAYS_KEPT
    small ones: a hot entry's stream hits render nothing (at most ~6 MB)."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: OrderedDict[tuple[bytes, str, bool], bytes] = OrderedDict()

    def stream(self, found: entries.Entry, include_usage: bool) -> bytes:
        """The SSE bytes of `found` for a request that does (or does not) want the usage chunk."""
        if len(found.body) > REPLAY_BODY_BYTES:
            return replay(found.api, msgspec.json.decode(found.body), include_usage)
        memo = (found.body, found.api, include_usage)  # (the memory store's entry keeps its body's hash)
        body = self.kept.get(memo)
        if body is None:
            body = replay(found.api, msgspec.json.decode(found.body), include_usage)
            if len(self.kept) >= REPLAYS_KEPT:
                self.kept.popitem(last=False)  # the oldest
            self.kept[memo] = body
        return body


def shaped_by(ex: Exchange) -> tuple[str, ...]:
    """The output guardrails and the answer-rewriting plugins (on_chunk, on_response) that this
    request's answer goes through. They may be scoped to some keys, teams or models, so two
    requests of one partition (team, shared:<ns>) can differ in them, and a hit runs none of
    them: an entry made without a key's masking must not reach that key."""
    names: list[str] = []
    guards, plugins = ex.guardrails, ex.plugins
    if guards is not None:
        names += ["guardrail:" + r.name for r in (*guards.output, *guards.checks)]
    if plugins is not None:
        names += ["plugin:" + p.spec.name for p in (*plugins.chunk, *plugins.response)]
    return tuple(names)


_NO_DIRECTIVES = (False, False)


def control(value: str | None) -> tuple[bool, bool]:
    """(no_store, no_cache) of a request's cache-control header."""
    if not value:
        return False, False
    directives = {part.strip().split("=", 1)[0].lower() for part in value.split(",")}
    return "no-store" in directives, "no-cache" in directives


class ResponseCache:
    """The cache of one config: its rules, and the backend, flights and counts it shares with
    the caches of the configs before it (a reload keeps the entries unless `cache:` changed)."""

    def __init__(self, config: Config, previous: ResponseCache | None = None, metrics: Metrics | None = None) -> None:
        self.config: CacheStore | None = config.cache
        self.rules = CacheRules(config)
        self.counts: CacheCounts = previous.counts if previous is not None else CacheCounts(metrics)
        self.flights: SingleFlight = previous.flights if previous is not None else SingleFlight()
        self.replays: Replays = previous.replays if previous is not None else Replays()
        self.retired: CacheBackend | None = None  # the previous backend, if this one replaces it: close it
        self.backend: CacheBackend | None = None  # None: nothing is cached
        if previous is not None and previous.config == self.config and previous.backend is not None:
            self.backend = previous.backend
        else:
            self.backend = _backend(self.config) if self.config is not None and self.rules else None
            self.retired = previous.backend if previous is not None else None
        store = self.config or CacheStore()
        self.max_entry = store.max_entry_bytes
        # (api, partition, config version, body) -> (key, sampled), for bodies up to MEMO_BODY_BYTES
        # (an OrderedDict: a dict's oldest, `next(iter(d))`, walks the holes its deletions left)
        self._memo: OrderedDict[tuple[str, str, str, bytes], tuple[str, bool]] = OrderedDict()
        self.lock_ttl = seconds(store.lock_ttl)

    def pipeline(self) -> Pipeline:
        if self.backend is None or not self.rules:  # nothing opted in: the request path stays as it is
            return Pipeline()
        return Pipeline(before_upstream=(self.lookup,), on_answer=(self.capture_answer,), after_response=(self.store,))

    async def aclose(self) -> None:
        if self.backend is not None:
            await self.backend.aclose()

    def may_answer(self, req: Admitted, api: str) -> bool:
        """Whether the cache could answer this request (its route, key or team opted in), so a
        refusal by a token or cost limit or a budget waits for the lookup: a hit generates
        nothing and counts against request limits only (issue 16)."""
        key = req.key.key
        return (self.backend is not None and api in CACHED_APIS
                and self.rules.rule(req.route.name, key.name, key.team) is not None)

    # -- before_upstream ---------------------------------------------------------------

    async def lookup(self, req: Admitted, ex: Exchange) -> None:
        key = req.key.key
        rule = self.rules.rule(req.route.name, key.name, key.team)
        if rule is None or ex.api not in CACHED_APIS:
            return
        state = ex.cache = CacheState(rule, req.head.wants_stream, req.head.wants_usage_chunk,
                                      self.max_entry * STREAM_CAPTURE_FACTOR)
        asked = ex.scope.headers.get("cache-control") if ex.scope is not None else None
        no_store, no_cache = control(asked) if asked else _NO_DIRECTIVES
        if no_store:
            self.counts.count(ex.route, BYPASS)
            return
        version = self.rules.version(req.route.name)
        if ex.passed_headers:  # (anthropic-beta reaches the provider beside the body: it is keyed too)
            version = with_headers(version, ex.passed_headers)
        if ex.guardrails is not None or ex.plugins is not None:
            shaping = shaped_by(ex)
            if shaping:
                version = config_version((version, shaping))
        # Byte-identical small bodies (retries, a client repeating itself: the requests that hit)
        # reuse the key worked out before, without decoding and hashing again.
        partition = rule.partition(req.key.key_id, key.team)
        memo = (ex.api, partition, version, req.body) if len(req.body) <= MEMO_BODY_BYTES else None
        named = self._memo.get(memo) if memo is not None else None
        if named is None:
            named = self._key(ex.api, partition, version, req.body, self.rules.honours_seed(req.route.name, ex.api))
            if named is None:
                self.counts.count(ex.route, BYPASS)
                return
        else:
            memo = None  # (remembered already)
        if named[1] and rule.deterministic_only:
            self._remember(memo, named)  # (passed by again the next time, from the memo)
            self.counts.count(ex.route, BYPASS)
            return
        state.key, state.storing = named[0], True
        if no_cache:  # the client wants a fresh answer: go upstream, then refresh the entry
            self.counts.count(ex.route, BYPASS)
            return
        if not self._found_at_once(state, ex):
            await self._find(state, ex)
        if state.entry is not None:  # a key that hit is worth remembering; a miss's mostly is not
            self._remember(memo, named)  # (most misses are never asked again: remembering cost each one)

    @staticmethod
    def _key(api: str, partition: str, version: str, body: bytes, seed_counts: bool) -> tuple[str, bool] | None:
        """(the cache key, whether the request is sampled), or None for a body that is not a JSON
        object (`seed_counts` follows from the route, as `version` does: the memo need not hold it)."""
        request = read(api, body, seed_counts)
        if request is None:
            return None
        return cache_key(api, partition, version, request), request.sampled

    def _remember(self, memo: tuple[str, str, str, bytes] | None, named: tuple[str, bool]) -> None:
        """Keep the key of a body (`memo`: None, too big or already kept) for its next request."""
        if memo is not None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.popitem(last=False)  # the oldest
            self._memo[memo] = named

    def _found_at_once(self, state: CacheState, ex: Exchange) -> bool:
        """`_find` for a memory store when it waits for nothing (a hit, or a miss that leads its
        flight): True if it decided; False leaves it to `_find` (a network store, a flight to
        join), which reads again. (No coroutine for what most lookups are.)"""
        key, backend = state.key, self.backend
        assert key is not None and backend is not None
        if not backend.local:
            return False
        if self._hit(state, backend.read(key), ex):
            return True
        if not self.flights.lead(key):
            return False
        state.leader = state.claimed = True  # (one process: its own flight is the lock)
        self._missed(state, ex)
        return True

    def _missed(self, state: CacheState, ex: Exchange) -> None:
        state.outcome = MISS
        self.counts.count(ex.route, MISS)

    async def _find(self, state: CacheState, ex: Exchange) -> None:
        key, backend = state.key, self.backend
        assert key is not None and backend is not None
        if self._hit(state, backend.read(key) if backend.local else await backend.get(key), ex):
            return
        if not self.flights.lead(key):  # an identical request is being answered: wait for it
            began = time.perf_counter()  # (its upstream's time, not the gateway's: the overhead metric)
            found = await self.flights.join(key, self.lock_ttl)
            ex.upstream_wait += time.perf_counter() - began
            if self._hit(state, found, ex, joined=True):
                return
        else:
            state.leader = True
            state.claimed, stored = (True, None) if backend.local else await backend.claim_fresh(key, self.lock_ttl)
            if not state.claimed:  # another replica is filling it
                began = time.perf_counter()
                found = await backend.await_fill(key, self.lock_ttl)
                ex.upstream_wait += time.perf_counter() - began
                if self._hit(state, found, ex, joined=True):
                    self.flights.land(key, state.entry)  # (as served: a stream's entry assembled)
                    state.leader = False
                    return
            elif self._hit(state, stored, ex):
                # The lock was free because the replica holding it had just stored the answer and
                # let go (after this request's read, before its claim): served from that, lock given back.
                backend.fill(key, None, self.lock_ttl, claimed=True)
                state.claimed = False
                self.flights.land(key, state.entry)
                state.leader = False
                return
        self._missed(state, ex)

    def _hit(self, state: CacheState, found: entries.Entry | None, ex: Exchange, joined: bool = False) -> bool:
        if found is None or found.api != ex.api:
            return False
        if found.sse:  # a stream's entry, read for the first time: assembled (and checked) now
            found = self._ready(state, found)
            if found is None:
                return False
        if state.stream and found.api in _STREAMED:
            try:
                state.rendered = self.replays.stream(found, state.include_usage)
            except _UNREPLAYABLE:  # an answer of a shape no stream can be made of (a tool call that is a string)
                assert state.key is not None and self.backend is not None
                self.backend.settle(state.key, found, None, 0.0)  # gone, not served: the request goes upstream
                return False
        state.entry, state.outcome, state.storing = found, HIT, False
        self.counts.count(ex.route, HIT)
        if joined:
            self.counts.joined()
        return True

    def _ready(self, state: CacheState, stored: entries.Entry) -> entries.Entry | None:
        """A stream's entry as its answer (None: not a complete one), which also takes its place
        in the store, so the entry is assembled once, not on every hit."""
        ready = answer_of(stored, self.max_entry)
        assert state.key is not None and self.backend is not None
        self.backend.settle(state.key, stored, ready, state.rule.ttl - (time.time() - stored.created))
        return ready

    # -- capture ---------------------------------------------------------------------------

    async def capture_answer(self, ex: Exchange, status: int, out: bytes) -> bytes:
        state = ex.cache
        if state is not None and state.storing and status == 200 and len(out) <= self.max_entry:
            state.answer = out
        return out

    # -- after_response --------------------------------------------------------------------

    def store(self, ex: Exchange) -> None:
        state = ex.cache
        if state is None or state.key is None or state.entry is not None:
            return
        value = None
        try:
            value = self._entry(ex, state) if state.storing and ex.status == 200 and not ex.error_type else None
            if value is not None and value.sse and self.flights.awaited(state.key):
                value = answer_of(value, self.max_entry)  # requests wait for it: each would assemble it
            if value is not None or state.claimed:
                assert self.backend is not None  # (a state with a key is only made when there is one)
                self.backend.fill(state.key, value, state.rule.ttl, state.claimed)
            if value is not None:
                self.counts.stored()
        finally:  # whatever happened above: a flight left in the air makes every later miss of the key wait lock_ttl
            if state.leader:
                self.flights.land(state.key, value)

    def _entry(self, ex: Exchange, state: CacheState) -> entries.Entry | None:
        """The stored form of the request's answer, or None if it is not one to keep."""
        if state.answer is not None:
            body = state.answer
            if not entries.storable_json(ex.api, body):
                return None
        elif state.chunks:  # kept as the client got it; assembled and checked when first read (entry.py)
            return entries.Entry(ex.api, b"".join(state.chunks), time.time(), ex.usage or _NOTHING, ex.upstream_model,
                                 sse=True)
        else:
            return None
        return entries.Entry(ex.api, body, time.time(), ex.usage or _NOTHING, ex.upstream_model)


def _backend(store: CacheStore) -> CacheBackend:
    if store.backend == "redis":  # (imported here: redis-py costs a worker ~15 MB, so only when used)
        from tollway.gateway.cache.redis_backend import RedisBackend
        return RedisBackend(store.redis_url, store.key_prefix)
    return MemoryBackend(store.max_bytes)

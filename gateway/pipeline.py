"""The request path's named seams, where features that act on every request plug in.

    admit ([authenticate]) → limits → [before_upstream] → upstream
        → relay, each chunk → [on_chunk] [on_chunk_async]  (a stream)
        → [on_answer]                                     (a non-stream answer, before it goes out)
        → settle → … → [after_response]

Each seam is a tuple of hooks run in order. A seam nothing uses costs one truth test per
request (per chunk for `on_chunk`): the gateway without features pays nothing more. What is
coming plugs in here: request hooks, guardrails and the cache lookup before the upstream
call; stream guardrails and budget enforcement per chunk; the usage record, the cache store
and `on_complete` hooks after the response. (The limiter stays in `admission.forward`: its
reservation decides the response headers, so it is the step before every seam.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from granian.rsgi import Scope

    from tollway.gateway.admission import Admitted
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.runtime import KeyRecord, Runtime


class Authenticate(Protocol):
    async def __call__(self, rt: Runtime, scope: Scope) -> KeyRecord | None:
        """A credential the key table does not know (or none): the key record it stands for, or
        None (the next hook is asked; after the last, the gateway's 401 stands). Only called when
        the key lookup failed: a request with a gateway key never reaches these."""


class BeforeUpstream(Protocol):
    async def __call__(self, req: Admitted, ex: Exchange) -> None:
        """Look at (or replace `req.body`/`req.head` of) an admitted request before it goes
        upstream; raise a GatewayError to refuse it (the client gets that error)."""


class OnChunk(Protocol):
    def __call__(self, ex: Exchange, out: bytes) -> bytes:
        """The client bytes of one relayed stream chunk, as they should go out (the same bytes,
        others, or b"" to hold them back); raise a GatewayError to end the stream with that
        error as its last event."""


class OnChunkAsync(Protocol):
    async def __call__(self, ex: Exchange, out: bytes) -> bytes:
        """`OnChunk` for hooks that must wait (plugins): run after the sync ones, on the same
        bytes (whole SSE events), with the same contract."""


class OnAnswer(Protocol):
    async def __call__(self, ex: Exchange, status: int, out: bytes) -> bytes:
        """The client bytes of a non-stream answer (its status: 2xx, or an upstream's error
        relayed as it is), before they go out: the same bytes, or others; raise a GatewayError
        to answer with it instead (a `PluginError` is not held against the upstream)."""


class AfterResponse(Protocol):
    def __call__(self, ex: Exchange) -> None:
        """Called once per request whose key was accepted, when it is finished and settled,
        whatever ended it (an answer, a refusal such as a 400 or 429, an upstream failure, a
        client that left): `ex` has its key, team, status, usage, cost and error. Runs in
        the app's `_finish`, after the response went out. Must not wait: queue anything slow."""


@dataclass(frozen=True, slots=True)
class Pipeline:
    before_upstream: tuple[BeforeUpstream, ...] = ()
    on_chunk: tuple[OnChunk, ...] = ()
    after_response: tuple[AfterResponse, ...] = ()
    authenticate: tuple[Authenticate, ...] = ()
    on_chunk_async: tuple[OnChunkAsync, ...] = ()
    on_answer: tuple[OnAnswer, ...] = ()

    def join(self, other: Pipeline) -> Pipeline:
        """This pipeline's hooks, then `other`'s, seam by seam."""
        if other == EMPTY:
            return self
        return Pipeline(self.before_upstream + other.before_upstream, self.on_chunk + other.on_chunk,
                        self.after_response + other.after_response, self.authenticate + other.authenticate,
                        self.on_chunk_async + other.on_chunk_async, self.on_answer + other.on_answer)


EMPTY = Pipeline()

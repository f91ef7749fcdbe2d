"""The request path's named seams, where features that act on every request plug in.

    admit → limits → [before_upstream] → upstream → relay, each chunk → [on_chunk] → settle → … → [after_response]

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
    from tollway.gateway.admission import Admitted
    from tollway.gateway.exchange import Exchange


class BeforeUpstream(Protocol):
    async def __call__(self, req: Admitted, ex: Exchange) -> None:
        """Look at (or replace `req.body`/`req.head` of) an admitted request before it goes
        upstream; raise a GatewayError to refuse it (the client gets that error)."""


class OnChunk(Protocol):
    def __call__(self, ex: Exchange, out: bytes) -> bytes:
        """The client bytes of one relayed stream chunk, as they should go out (the same bytes,
        others, or b"" to hold them back); raise a GatewayError to end the stream with that
        error as its last event."""


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


EMPTY = Pipeline()

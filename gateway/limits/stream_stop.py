"""Stopping a stream that would take a limit or a budget past its bound
(`rate_limits.enforce_streams`, docs/limits.md "Streams: stopped at the limit", docs/ledger.md
"Overshoot").

Theory of operation
-------------------
A stream that has a token or cost limit (`output_tokens`, `total_tokens`, `cost_usd`) or a
calendar budget gets one `StreamStop` as the last of its async per-chunk hooks
(tollway.gateway.pipeline), so it sees the bytes that really go out. Nothing else gets one: a
request with no such limit or budget relays with the pipeline's seams as they were (empty,
usually), and pays nothing per chunk.

Per chunk it bounds the tokens of the chunk's text and argument deltas without decoding
anything: a token is at least one UTF-8 byte, and `text_bound` (tollway.ext.sse, one compiled
scan) gives at least the bytes of what `tollway.core.accounting.stream_text.chunk_texts` would
read. While the tokens counted so far plus the bounds of the chunks not counted yet fit in
`allowed`, the chunk passes and is only held. When they do not fit, each source first tries to
*grow ahead*: a whole step (or more) covering the bound, where that costs no store call and
cannot fail the stream (`Limiter.extend_ahead`, a claim on a budget); far from the limit that is
all, and a stream is never decoded nor tokenized. Only when growing ahead fails (near the
limit, or when the Redis store has no local lease to decide from) are the held chunks decoded and
counted with tiktoken, and the chunk's exact count decides, as below. Held chunks are also
counted once they reach PENDING_BYTES (one decode and tiktoken call per 64 KB of stream).
Counts are never guessed: a worker loads a model's encoding on the counting pool when a stream
first needs an exact count (~0.2 s once per worker; that stream waits for it): near a limit, or
past PENDING_BYTES. A worker whose streams stay short and far from their limits never holds the
tokenizer (~45 MB). Past `allowed` by the
exact count, each *source* of headroom that is short grows first, before the chunk goes out:

- `LimitHeadroom`: the limiter's reservation (tollway.core.limits.streams.allowance), then
  extensions taken from the growing buckets in steps (`Limiter.extend`: the memory table, or
  the Redis store's local lease, or one Redis call per step);
- `BudgetHeadroom`: nothing at first; claims on the key's and team's budgets in steps, the
  first one with the prompt's cost (`BudgetKeeper.claim`, a dict update in this process).

A source that cannot grow raises its 429 (`rate_limit_exceeded` for a token limit,
`insufficient_quota` for a cost limit or a budget, as at admission): the relay sends it as the
stream's last event in the client API's shape, the chunk that did not fit is not sent, and the
upstream answer, left unread, is closed rather than pooled. `cut` is then set, and the
admission step settles the request with `usage` (what was sent) instead of what the upstream
produced.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from tollway.core.accounting.pricebook import PriceBook
from tollway.core.accounting.pricing import FREE
from tollway.core.accounting.stream_text import chunk_texts
from tollway.core.accounting.tokens import encoding_for, encoding_name_for_model
from tollway.core.errors import GatewayError
from tollway.core.kernels import text_bound
from tollway.core.limits.streams import STEP_TOKENS, allowance, output_rate, prompt_cost, unreserved_prompt_cost
from tollway.ext.usage import Usage
from tollway.gateway.token_count import INLINE_MAX_CHARS, count_tokens_off_loop, encoding_ready

if TYPE_CHECKING:
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.limits.limiter import Growing, Lease, Limiter
    from tollway.gateway.store.budgets import BudgetKeeper

__all__ = ["PENDING_BYTES", "BudgetHeadroom", "LimitHeadroom", "StreamStop", "stream_stop"]

# Chunk bytes a stream may hold uncounted: one decode and tiktoken call per that much (~300
# tokens of OpenAI chunks, ~0.1 ms), and what each stream holds here at most (1,500 streams: 96 MB).
PENDING_BYTES = 64 * 1024


class Headroom(Protocol):
    allowed: float  # output tokens this source lets the stream send so far

    async def grow(self, ex: Exchange, sent: float) -> None:
        """Make `allowed` at least `sent`; raises the GatewayError to stop the stream with."""

    def grow_ahead(self, ex: Exchange, bound: float) -> bool:
        """Make `allowed` at least `bound` (a bound of what was sent, not a count) by a whole step
        where that is cheap and certain; False (nothing stopped) when it is not."""


class LimitHeadroom:
    """The reservation's growing buckets (output, total, cost tokens). Cost buckets are charged
    at the price the answer will be charged at: the route's, served as the attempt's upstream
    model (an alias route with no price of its own costs what its target's model does), so
    with a cost bucket the allowance is worked out at the first chunk, when that model is
    known; until then nothing is allowed, so the first chunk asks. A prompt cost the
    reservation did not hold (priced as served, it reserved none) is taken with the first
    extension."""

    __slots__ = ("limiter", "lease", "growing", "allowed", "priced", "owed")

    def __init__(self, limiter: Limiter, lease: Lease, growing: Growing) -> None:
        self.limiter, self.lease, self.growing = limiter, lease, growing
        self.priced = not growing.plan.priced  # (no cost bucket: the price changes nothing)
        self.allowed = allowance(growing.plan, lease.demand, FREE) if self.priced else 0.0
        self.owed = 0.0  # USD of prompt the reservation did not hold

    async def grow(self, ex: Exchange, sent: float) -> None:
        self._price_served(ex)
        need = sent - self.allowed
        if need > 0:
            self.allowed += await self.limiter.extend(self.lease, self.growing, max(need, self.growing.step), need,
                                                      self.owed)
            self.owed = 0.0

    def grow_ahead(self, ex: Exchange, bound: float) -> bool:
        self._price_served(ex)
        if bound <= self.allowed:
            return True
        tokens = max(bound - self.allowed, self.growing.step)
        if not self.limiter.extend_ahead(self.lease, self.growing, tokens, self.owed):
            return False
        self.allowed += tokens
        self.owed = 0.0
        return True

    def _price_served(self, ex: Exchange) -> None:
        """Once: the allowance at the served price (FREE if there is none: then the cost
        buckets bound nothing, as for any unpriced model)."""
        if self.priced:
            return
        self.priced = True
        price = self.limiter.policy.known_price(self.lease.model, ex.upstream_model) or FREE
        rate = output_rate(price)
        if rate != self.growing.rate:
            self.growing = self.growing.at_rate(rate)
        self.allowed = allowance(self.growing.plan, self.lease.demand, price)
        if rate > 0.0:
            self.owed = unreserved_prompt_cost(self.lease.demand, price)


class BudgetHeadroom:
    """Claims on the request's budgets. The price is the one its cost will be charged at (the
    route's, served as the attempt's upstream model), so it is looked up at the first claim,
    when the upstream model is known; an unpriced or free answer is never charged, so it has
    no bound here."""

    __slots__ = ("keeper", "prices", "route", "prompt_tokens", "rate", "prompt_usd", "allowed")

    def __init__(self, keeper: BudgetKeeper, prices: PriceBook, route: str, prompt_tokens: float) -> None:
        self.keeper, self.prices, self.route, self.prompt_tokens = keeper, prices, route, prompt_tokens
        self.rate = -1.0  # USD per output token, once known
        self.prompt_usd = 0.0  # claimed with the first step
        self.allowed = 0.0

    async def grow(self, ex: Exchange, sent: float) -> None:
        if self._unbounded(ex):
            return
        need = sent - self.allowed
        refusal = None
        for tokens in (max(need, STEP_TOKENS), need):
            refusal = self._claim(ex, tokens)
            if refusal is None:
                return
        assert refusal is not None
        refusal.message = f"The stream was stopped: {refusal.message}"
        raise refusal

    def grow_ahead(self, ex: Exchange, bound: float) -> bool:
        return self._unbounded(ex) or self._claim(ex, max(bound - self.allowed, STEP_TOKENS)) is None

    def _unbounded(self, ex: Exchange) -> bool:
        """True if the answer is never charged (looked up once: the first claim's)."""
        if self.rate < 0.0:
            price = self.prices.price(self.route, ex.upstream_model)
            if price is None or output_rate(price) == 0.0:
                self.rate, self.allowed = 0.0, math.inf
                return True
            self.rate, self.prompt_usd = output_rate(price), prompt_cost(self.prompt_tokens, price)
        return self.rate == 0.0

    def _claim(self, ex: Exchange, tokens: float) -> GatewayError | None:
        refusal = self.keeper.claim(ex, self.prompt_usd + tokens * self.rate)
        if refusal is None:
            self.prompt_usd, self.allowed = 0.0, self.allowed + tokens
        return refusal


class StreamStop:
    """One stream's per-chunk check (an `OnChunkAsync` hook).

    Counting is lazy, and far from the limit there is none: a token is at least one byte of
    UTF-8, so `text_bound` (one compiled scan of the chunk, no decoding) bounds a chunk's tokens
    from above. While the tokens counted plus the bounds of the chunks not counted yet fit in
    `allowed`, the chunk passes and is only held (a reference). When they do not fit, the
    sources first try to grow ahead by a whole step to cover the bound where that is cheap and
    certain (`Headroom.grow_ahead`: no store call, no stop); only when that fails, near the
    limit, is the held text decoded and counted with tiktoken, and the chunk's exact need
    decides (`Headroom.grow`, which may stop the stream). The held chunks are also counted
    once they reach PENDING_BYTES, which bounds what a stream holds here."""

    __slots__ = ("sources", "allowed", "sent", "cut", "model", "_pending", "_bound", "_held", "_encode")

    def __init__(self, sources: tuple[Headroom, ...], model: str) -> None:
        self.sources = sources
        self.allowed = min(s.allowed for s in sources)
        self.sent = 0  # output tokens counted of the deltas that went out
        self.cut = False  # stopped here: settle with `usage`
        self.model = model
        self._pending: list[bytes] = []  # chunks that went out with text, not counted yet
        self._bound = 0  # the bound of their tokens (text_bound)
        self._held = 0  # their length
        self._encode: Callable[[str], list[int]] | None = None  # set once the model's encoding is loaded

    async def __call__(self, ex: Exchange, out: bytes) -> bytes:
        if self.allowed == math.inf:  # (its sources found nothing to bound: an unpriced answer)
            return out
        size = text_bound(out)
        if not size:
            return out
        bound = self._bound + size
        if self.sent + bound > self.allowed and not self._grew_ahead(ex, self.sent + bound):
            return await self._counted(ex, out)
        self._pending.append(out)
        self._bound, self._held = bound, self._held + len(out)
        if self._held > PENDING_BYTES:
            await self._count_pending()
        return out

    def _grew_ahead(self, ex: Exchange, bound: float) -> bool:
        for source in self.sources:
            if source.allowed < bound and not source.grow_ahead(ex, bound):
                self.allowed = min(s.allowed for s in self.sources)
                return False
        self.allowed = min(s.allowed for s in self.sources)
        return True

    async def _counted(self, ex: Exchange, out: bytes) -> bytes:
        """The chunk, counted exactly with what is held, and let through only if the sources can
        grow to cover it: else the GatewayError to stop the stream with."""
        await self._count_pending()  # sent already: counted apart from this chunk, which may be held back
        sent = self.sent + await self._count("".join(chunk_texts(out)))
        if sent > self.allowed:
            try:
                for source in self.sources:
                    if source.allowed < sent:
                        await source.grow(ex, sent)
            except GatewayError:
                self.cut = True
                raise
            self.allowed = min(s.allowed for s in self.sources)
        self.sent = sent
        return out

    async def _count_pending(self) -> None:
        if self._pending:
            self.sent += await self._count("".join(chunk_texts(b"\n".join(self._pending))))  # (a chunk may lack its last \n)
            self._pending, self._bound, self._held = [], 0, 0

    async def _count(self, text: str) -> int:
        """Tokens in `text`: inline once the process has the model's encoding (short texts:
        PENDING_BYTES), else on the counting pool, which loads it off the loop (~0.2 s, once per
        process and encoding: the first such stream's chunks wait for it; nothing is guessed)."""
        encode = self._encode
        if encode is None and encoding_ready(self.model):
            encode = self._encode = encoding_for(encoding_name_for_model(self.model)).encode_ordinary
        if encode is not None and len(text) < INLINE_MAX_CHARS:
            return len(encode(text))
        return await count_tokens_off_loop(text, self.model)

    def usage(self, reported: Usage | None) -> Usage:
        """The usage of a stream this hook stopped: its prompt as the relay counted it, and the
        output tokens that were sent (not the chunk held back, nor what the upstream went on to
        make)."""
        if reported is None:
            return Usage(0, self.sent, self.sent)
        return msgspec.structs.replace(reported, completion_tokens=self.sent,
                                       total_tokens=reported.prompt_tokens + self.sent)


def stream_stop(ex: Exchange, model: str, prompt_tokens: float, limiter: Limiter | None, lease: Lease | None,
                keeper: BudgetKeeper | None = None, prices: PriceBook | None = None) -> StreamStop | None:
    """The hook for one stream, or None when neither its limits nor its budgets can be taken
    past their bound by its output (then it relays without one). `prices`: the runtime's, for
    budgets (`ex.route` is the route)."""
    sources: list[Headroom] = []
    if lease is not None and limiter is not None:
        growing = limiter.growing(lease)
        if growing is not None:
            headroom = LimitHeadroom(limiter, lease, growing)
            if headroom.allowed != math.inf:  # (no growing bound at all: nothing to pass)
                sources.append(headroom)
    if keeper and prices is not None and keeper.book.applies(ex.key_name, ex.team):
        sources.append(BudgetHeadroom(keeper, prices, ex.route, prompt_tokens))
    return StreamStop(tuple(sources), model) if sources else None

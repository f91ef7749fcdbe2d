"""Stopping a stream that would take a limit or a budget past its bound
(`rate_limits.enforce_streams`, docs/limits.md "Streams", docs/ledger.md "Overshoot").

Theory of operation
-------------------
A stream that has a token or cost limit (`output_tokens`, `total_tokens`, `cost_usd`) or a
calendar budget gets one `StreamStop` as the last of its async per-chunk hooks
(tollway.gateway.pipeline), so it sees the bytes that really go out. Nothing else gets one: a
request with no such limit or budget relays with the pipeline's seams as they were (empty,
usually), and pays nothing per chunk.

Per chunk it counts the output tokens in the chunk's text and argument deltas
(`tollway.core.accounting.stream_text`): tiktoken on each delta, about 1 us (the first stream
of a model in a process waits for the counting pool to load its encoding: counts are never
guessed, and the loop never loads one). If the stream's
count stays within `allowed`, the chunk passes: a decode, a count and one comparison. Past it,
each *source* of headroom that is short grows first, before the chunk goes out:

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

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

import msgspec

from tollway.core.accounting.pricing import Price
from tollway.core.accounting.stream_text import chunk_texts
from tollway.core.accounting.tokens import count_tokens, encoding_for, encoding_name_for_model
from tollway.core.errors import GatewayError
from tollway.core.limits.streams import STEP_TOKENS, allowance, output_rate, prompt_cost
from tollway.ext.usage import Usage
from tollway.gateway.token_count import count_off_loop, encoding_ready

if TYPE_CHECKING:
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.limits.limiter import Growing, Lease, Limiter
    from tollway.gateway.store.budgets import BudgetKeeper

__all__ = ["BudgetHeadroom", "LimitHeadroom", "StreamStop", "stream_stop"]


class Headroom(Protocol):
    allowed: float  # output tokens this source lets the stream send so far

    async def grow(self, ex: Exchange, sent: float) -> None:
        """Make `allowed` at least `sent`; raises the GatewayError to stop the stream with."""


class LimitHeadroom:
    __slots__ = ("limiter", "lease", "growing", "allowed")

    def __init__(self, limiter: Limiter, lease: Lease, growing: Growing, price: Price) -> None:
        self.limiter, self.lease, self.growing = limiter, lease, growing
        self.allowed = allowance(growing.plan, lease.demand, price)

    async def grow(self, ex: Exchange, sent: float) -> None:
        need = sent - self.allowed
        self.allowed += await self.limiter.extend(self.lease, self.growing, max(need, self.growing.step), need)


class BudgetHeadroom:
    __slots__ = ("keeper", "rate", "prompt_usd", "allowed")

    def __init__(self, keeper: BudgetKeeper, price: Price, prompt_tokens: float) -> None:
        self.keeper, self.rate = keeper, output_rate(price)
        self.prompt_usd = prompt_cost(prompt_tokens, price)  # claimed with the first step
        self.allowed = 0.0

    async def grow(self, ex: Exchange, sent: float) -> None:
        need = sent - self.allowed
        refusal = None
        for tokens in (max(need, STEP_TOKENS), need):
            refusal = self.keeper.claim(ex, self.prompt_usd + tokens * self.rate)
            if refusal is None:
                self.prompt_usd, self.allowed = 0.0, self.allowed + tokens
                return
        assert refusal is not None
        refusal.message = f"The stream was stopped: {refusal.message}"
        raise refusal


class StreamStop:
    """One stream's per-chunk check (an `OnChunkAsync` hook)."""

    __slots__ = ("sources", "allowed", "sent", "cut", "model", "_encode")

    def __init__(self, sources: tuple[Headroom, ...], model: str) -> None:
        self.sources = sources
        self.allowed = min(s.allowed for s in sources)
        self.sent = 0  # output tokens in the deltas that went out
        self.cut = False  # stopped here: settle with `usage`
        self.model = model
        self._encode: Callable[[str], list[int]] | None = None  # set once the model's encoding is loaded

    async def __call__(self, ex: Exchange, out: bytes) -> bytes:
        texts = chunk_texts(out)
        if not texts:
            return out
        encode = self._encode
        sent = self.sent
        if encode is not None:
            for text in texts:
                sent += len(encode(text))
        else:
            sent += await self._count_first(texts)
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

    async def _count_first(self, texts: list[str]) -> int:
        """The tokens of `texts` before this hook holds the encoding: inline if the process has
        loaded it, else on the counting pool, which loads it off the loop (~0.2 s, once per
        process and encoding: the first such stream's chunks wait for it, no chunk is guessed)."""
        if encoding_ready(self.model):
            self._encode = encoding_for(encoding_name_for_model(self.model)).encode_ordinary
            return sum(len(self._encode(text)) for text in texts)
        return await count_off_loop(sum(map(len, texts)), self.model, partial(_count_all, texts, self.model))

    def usage(self, reported: Usage | None) -> Usage:
        """The usage of a stream this hook stopped: its prompt as the relay counted it, and the
        output tokens that were sent (not the chunk held back, nor what the upstream went on to
        make)."""
        if reported is None:
            return Usage(0, self.sent, self.sent)
        return msgspec.structs.replace(reported, completion_tokens=self.sent,
                                       total_tokens=reported.prompt_tokens + self.sent)


def _count_all(texts: list[str], model: str) -> int:
    return sum(count_tokens(text, model) for text in texts)


def stream_stop(ex: Exchange, model: str, prompt_tokens: float, limiter: Limiter | None, lease: Lease | None,
                keeper: BudgetKeeper | None, price: Price | None) -> StreamStop | None:
    """The hook for one stream, or None when neither its limits nor its budgets can be taken
    past their bound by its output (then it relays without one). `price`: the route's, for
    budgets (None: unpriced, nothing is charged to a budget)."""
    sources: list[Headroom] = []
    if lease is not None and limiter is not None:
        growing = limiter.growing(lease)
        if growing is not None:
            sources.append(LimitHeadroom(limiter, lease, growing, limiter.policy.price(lease.model)))
    if keeper and price is not None and output_rate(price) > 0.0 and keeper.book.applies(ex.key_name, ex.team):
        sources.append(BudgetHeadroom(keeper, price, prompt_tokens))
    return StreamStop(tuple(sources), model) if sources else None

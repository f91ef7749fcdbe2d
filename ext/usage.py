"""Token usage, as OpenAI reports it, whatever the provider.

It sits with the kernels because it is part of their interface: the stream relay kernel
(`_sse`, and its twin `sse`) returns a `Usage` read from the stream's last chunk. Every layer
above uses the same struct."""
from __future__ import annotations

import msgspec


class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class OpenAIUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptDetails | None = None
    completion_tokens_details: CompletionDetails | None = None
    # Embeddings and the Responses API use these names.
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: PromptDetails | None = None
    output_tokens_details: CompletionDetails | None = None


class UsageEnvelope(msgspec.Struct):
    """Any OpenAI response body, decoded only as far as its usage."""

    usage: OpenAIUsage | None = None
    model: str | None = None


MAX_TOKENS = 10**12  # a count past this is no real answer's: what an upstream's absurd number is held to

_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
           "cache_write_tokens")


class Usage(msgspec.Struct):
    """Token counts of one response, in the gateway's own terms.

    Every count is held to 0..MAX_TOKENS and the units to 0..MAX_TOKENS (or NaN) when the struct
    is made: the numbers are an upstream's word, and a negative or astronomically large one must
    not run a counter backwards, raise in a histogram or a span's int64, refund more than a
    limit reserved, or lose the request's ledger record. Held here once, so pricing, limits,
    the ledger, metrics and spans read them as they are (one chained comparison a struct; the
    rare absurd usage is mended in `_hold`). Nothing assigns a count afterwards."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    # What an answer is billed by besides tokens (tollway.core.accounting.pricing.unit_cost):
    # `units` of `unit`, "image:SIZE/QUALITY", "audio_second", "character" or "search_unit".
    units: float = 0.0
    unit: str = ""

    def __post_init__(self) -> None:
        if not (0 <= self.prompt_tokens <= MAX_TOKENS and 0 <= self.completion_tokens <= MAX_TOKENS
                and 0 <= self.total_tokens <= MAX_TOKENS and 0 <= self.cached_tokens <= MAX_TOKENS
                and 0 <= self.reasoning_tokens <= MAX_TOKENS and 0 <= self.cache_write_tokens <= MAX_TOKENS
                and 0.0 <= self.units <= MAX_TOKENS):  # (NaN units fail it, and stay NaN)
            self._hold()

    def _hold(self) -> None:
        for name in _COUNTS:
            setattr(self, name, _held(getattr(self, name)))
        # +inf is past any bound, as 1e300 is: held to the most. NaN stays: no number of units at
        # all, which pricing takes as unpriceable (null, not a silent $0).
        self.units = min(max(float(self.units), 0.0), float(MAX_TOKENS))


def _held(count: float) -> int:
    """A count as an int within 0..MAX_TOKENS (NaN: 0)."""
    if count != count:
        return 0
    return int(min(max(count, 0), MAX_TOKENS))


def from_openai(u: OpenAIUsage) -> Usage:
    """Normalize an OpenAI usage object (chat, completions, embeddings or responses)."""
    prompt = u.prompt_tokens if u.prompt_tokens is not None else (u.input_tokens or 0)
    completion = u.completion_tokens if u.completion_tokens is not None else (u.output_tokens or 0)
    total = u.total_tokens if u.total_tokens is not None else prompt + completion
    prompt_details = u.prompt_tokens_details or u.input_tokens_details
    completion_details = u.completion_tokens_details or u.output_tokens_details
    cached = (prompt_details.cached_tokens or 0) if prompt_details else 0
    reasoning = (completion_details.reasoning_tokens or 0) if completion_details else 0
    return Usage(prompt, completion, total, cached, reasoning)


_decode_envelope = msgspec.json.Decoder(UsageEnvelope).decode


def usage_of_json(body: bytes) -> Usage | None:
    """The usage in an OpenAI JSON response body, or None if it has none (or one of an odd
    shape: that is the upstream's business). Raises msgspec.DecodeError if it is not JSON."""
    try:
        env = _decode_envelope(body)
    except msgspec.ValidationError:
        return None
    return from_openai(env.usage) if env.usage is not None else None

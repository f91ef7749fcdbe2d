"""Prices per model (USD per million tokens) and the cost of one response.

A model's price comes from its `price:` in the config, else from `DEFAULT_PRICES`, the list
prices of well-known models shipped with the gateway (checked 2025; override them in the
config when your contract differs). Dated or vendor-prefixed names (`gpt-4o-2024-08-06`,
`openai/gpt-4o`, `us.anthropic.claude-sonnet-4-20250514-v1:0`) find their base model by the
longest known prefix, so `gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`, not `gpt-4o`.

Token semantics are OpenAI's: `prompt_tokens` includes cached and cache-write tokens, and
`completion_tokens` includes reasoning tokens, so each part is billed exactly once.
"""
from __future__ import annotations

import msgspec

from tollway.ext.usage import Usage

PER_TOKEN = 1e-6  # prices are per million tokens


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # defaults to `input` when unset
    cache_write: float | None = None   # defaults to `input` when unset


FREE = Price()


def cost(usage: Usage, price: Price) -> float:
    """The USD cost of `usage` at `price`. Never negative, whatever the upstream reported."""
    cached = max(usage.cached_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    fresh = max(usage.prompt_tokens - cached - written, 0)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    dollars = (fresh * price.input + cached * cached_rate + written * write_rate
               + max(usage.completion_tokens, 0) * price.output)
    return dollars * PER_TOKEN


def upper_cost(prompt_tokens: float, output_tokens: float, price: Price) -> float:
    """The most a request of this many prompt and output tokens can cost (no cache discount)."""
    prompt_rate = max(price.input, price.cache_write or 0.0)
    return (prompt_tokens * prompt_rate + output_tokens * price.output) * PER_TOKEN


def _p(inp: float, out: float, cached: float | None = None, write: float | None = None) -> Price:
    return Price(input=inp, output=out, cached_input=cached, cache_write=write)


DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-5": _p(1.25, 10.00, 0.125),
    "gpt-5-mini": _p(0.25, 2.00, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-4.1": _p(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.00, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "gpt-4-turbo": _p(10.00, 30.00),
    "gpt-4": _p(30.00, 60.00),
    "gpt-3.5-turbo": _p(0.50, 1.50),
    "o1": _p(15.00, 60.00, 7.50),
    "o1-mini": _p(1.10, 4.40, 0.55),
    "o3": _p(2.00, 8.00, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "text-embedding-3-small": _p(0.02, 0.0),
    "text-embedding-3-large": _p(0.13, 0.0),
    "text-embedding-ada-002": _p(0.10, 0.0),
    # Anthropic (cache write is the 5-minute rate)
    "claude-opus-4": _p(15.00, 75.00, 1.50, 18.75),
    "claude-sonnet-4": _p(3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": _p(3.00, 15.00, 0.30, 3.75),
    "claude-3-5-sonnet": _p(3.00, 15.00, 0.30, 3.75),
    "claude-3-5-haiku": _p(0.80, 4.00, 0.08, 1.00),
    "claude-haiku-4-5": _p(1.00, 5.00, 0.10, 1.25),
    "claude-3-haiku": _p(0.25, 1.25, 0.03, 0.30),
    "claude-3-opus": _p(15.00, 75.00, 1.50, 18.75),
    # Google (prompts up to 200k tokens for the tiered models)
    "gemini-2.5-pro": _p(1.25, 10.00, 0.31),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-1.5-pro": _p(1.25, 5.00),
    "gemini-1.5-flash": _p(0.075, 0.30),
}

# Vendor prefixes of model ids on cloud platforms (Bedrock, Vertex, OpenRouter-style names).
_VENDOR_PREFIXES = ("us.", "eu.", "apac.", "anthropic.", "openai.", "google.")


def default_price(model: str, table: dict[str, Price] = DEFAULT_PRICES) -> Price | None:
    """The shipped price of `model` by longest known prefix, or None if it is not known."""
    name = model.rsplit("/", 1)[-1].lower()
    stripped = True
    while stripped:
        stripped = False
        for prefix in _VENDOR_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    best = ""
    for known in table:
        if name.startswith(known) and len(known) > len(best) and _at_boundary(name, len(known)):
            best = known
    return table[best] if best else None


def _at_boundary(name: str, end: int) -> bool:
    """`gpt-4o` is a prefix of `gpt-4o-2024` but must not price `gpt-4oz`, nor `gpt-4` `gpt-4.5`."""
    return end == len(name) or name[end] in "-@:"

"""Prices per model (USD per million tokens) and the cost of one response.

A model's price comes from its `price:` in the config, else from the price dataset of the
`genai-prices` package (`dataset_price`): the snapshot of its data shipped inside the installed
package, read locally. Nothing here fetches prices over the network, and nothing calls the
package's updater, so a gateway prices the same offline as online; a newer dataset arrives with
a newer package. A model neither knows has no price (`None`): its usage is unpriced, not free.
The dataset is read as a compact table (tollway.core.accounting.price_table): a worker gets it
built in another process (`use_table`, tollway.gateway.price_source), since importing the
package costs ~11 MB; anywhere else it is built here at the first lookup.

Token semantics are OpenAI's: `prompt_tokens` includes cached and cache-write tokens, and
`completion_tokens` includes reasoning tokens, so each part is billed exactly once, at its
own class's rate: fresh input, cached input, cache write, visible output, reasoning.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date

import msgspec

from tollway.core.accounting.price_export import from_dataset
from tollway.core.accounting.price_table import PriceTable, Rates, rates_on
from tollway.ext.usage import MAX_TOKENS, Usage

PER_TOKEN = 1e-6  # prices are per million tokens


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # defaults to `input` when unset
    cache_write: float | None = None   # defaults to `input` when unset
    reasoning: float | None = None     # defaults to `output` when unset
    # Prices of what is not billed by the token (images, audio, rerank; docs/providers.md):
    image: dict[str, float] = {}       # USD per image by "SIZE/QUALITY", "SIZE", "QUALITY" or "*"
    audio_minute: float | None = None  # USD per minute of audio transcribed or translated
    characters: float | None = None    # USD per million characters of speech input (tts-1)
    search_unit: float | None = None   # USD per rerank search unit (Cohere bills per search)


FREE = Price()


# What one answer is billed for, at most: an upstream's counts are bounded by nothing (Cohere's
# billed search_units is any JSON number, up to 1.7e308), and a cost past float's range, or a sum
# of such costs in the ledger's rollup, is an infinity PostgreSQL refuses and SQLite keeps. A
# trillion tokens or units is far past any real answer and still prices to a finite number.
# (`Usage` holds its counts and units to it when it is made.)
MAX_COUNT = float(MAX_TOKENS)
# A cost above this is no real answer's (a count at MAX_COUNT at any real rate stays far below),
# but a broken price or report: it is unpriced (None), so the ledger's sums stay finite.
MAX_COST_USD = 1e15


def cost(usage: Usage, price: Price) -> float | None:
    """The USD cost of `usage` at `price`: never negative, whatever the upstream reported, or
    None when it is no sane number (NaN, infinite, above MAX_COST_USD): then the answer is
    unpriced, as for a model with no price (recorded as null, counted $0 against limits).

    Reasoning tokens are part of `completion_tokens`: they are billed at the reasoning rate and
    the rest of the completion at the output rate (reasoning beyond the completion is capped).
    Each count is within 0..MAX_COUNT already (`Usage` holds them so when it is made)."""
    # (Runs for every priced answer: the bounds are comparisons, as max/min would make them
    # but without their generic call; `x < 0.0` keeps a NaN as max(x, 0.0) does.)
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    fresh = usage.prompt_tokens - cached - written
    if fresh < 0:
        fresh = 0
    completion, reasoning = usage.completion_tokens, usage.reasoning_tokens
    if completion < reasoning:
        reasoning = completion
    cached_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    dollars = (fresh * price.input + cached * cached_rate + written * write_rate
               + (completion - reasoning) * price.output + reasoning * reasoning_rate)
    dollars = (0.0 if dollars < 0.0 else dollars) * PER_TOKEN
    if usage.units:  # (an image, audio or rerank answer: one truth test for the rest)
        dollars += unit_cost(usage, price)
    if not dollars <= MAX_COST_USD:  # (written so that NaN is refused too)
        return None
    return 0.0 if dollars < 0.0 else dollars


def unit_cost(usage: Usage, price: Price) -> float:
    """The USD cost of `usage.units` (at most MAX_COUNT) of `usage.unit` at `price` (0 where the
    price has no rate for it: such a model is priced by its tokens only)."""
    units, unit = usage.units, usage.unit  # (finite, within 0..MAX_COUNT: Usage holds them so)
    if unit.startswith("image:"):
        return units * (_image_rate(price.image, unit[6:]) or 0.0)
    rate = {"audio_second": (price.audio_minute or 0.0) / 60, "character": (price.characters or 0.0) * PER_TOKEN,
            "search_unit": price.search_unit or 0.0}.get(unit, 0.0)
    return units * rate


def _image_rate(rates: dict[str, float], tier: str) -> float | None:
    """The price of one image of `tier` ("SIZE/QUALITY"): the most specific rate given."""
    if not rates:
        return None
    size, _, quality = tier.partition("/")
    for name in (tier, size, quality, "*"):
        if name in rates:
            return rates[name]
    return None


def upper_cost(prompt_tokens: float, output_tokens: float, price: Price) -> float:
    """The most a request of this many prompt and output tokens can cost (no cache discount)."""
    prompt_rate = max(price.input, price.cache_write or 0.0)
    output_rate = max(price.output, price.reasoning or 0.0)
    return (prompt_tokens * prompt_rate + output_tokens * output_rate) * PER_TOKEN


# -- the price dataset ---------------------------------------------------------------------

# The config's provider schemas, as the dataset's provider ids. `openai` is any OpenAI-compatible
# server too; a model its provider does not list is still looked up without the hint. The
# built-in `fake` (and any schema not here) gives no hint.
DATASET_PROVIDERS = {
    "openai": "openai",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "bedrock": "aws",
    "vertex": "google",
    "gemini": "google",
    "cohere": "cohere",
}
# Tried last, in order, for a name the dataset cannot place itself: it guesses the provider of
# `gpt-*`, `claude-*` or `gemini-*` from the name, but not of `text-embedding-3-small`.
_LAST_RESORT_PROVIDERS = ("openai", "anthropic", "google")
# Vendor prefixes of model ids on cloud platforms (Bedrock cross-region profiles, Bedrock and
# Vertex vendor names) and the provider each names, for a name the dataset does not match whole.
_VENDOR_PREFIXES = {"us.": None, "eu.": None, "apac.": None, "global.": None,
                    "anthropic.": "anthropic", "openai.": "openai", "google.": "google"}


@functools.lru_cache(maxsize=4096)  # bounded: names come from config and upstream answers
def dataset_price(model: str, provider: str | None = None, today: date | None = None) -> Price | None:
    """The dataset's price of `model`, or None if the dataset does not know it.

    `provider` is the config's provider schema (`openai`, `azure_openai`, `anthropic`,
    `bedrock`, `vertex`, `gemini`, `fake`): a hint, tried first, then the dataset's own guess
    from the name. Names are matched as the dataset matches them (case, dates and versions:
    `gpt-4o-mini-2024-07-18`, `claude-3-5-sonnet@20240620`), then without a vendor path or
    prefix (`openai/gpt-4o`, `us.anthropic.claude-sonnet-4-20250514-v1:0`).

    The price is the one in effect on `today` (None: the newest the dataset lists, including
    announced changes). What a `Price` cannot hold is simplified, and never below the list
    price of a plain text request:
    - tiered prices (by prompt size, e.g. above 200k tokens) give their base tier;
    - time-of-day discounts (off-peak) are not applied: the full price is used;
    - cache write is the default (5-minute) rate; per-request, search, audio and image
      prices are not represented;
    - price variants chosen by request context (batch, service tier) are not applied.
    A model the dataset lists without a per-token input or output price has no price (None).
    """
    hint = DATASET_PROVIDERS.get(provider) if provider is not None else None
    names = _names(model)
    attempts = [(ref, p) for ref, vendor in names for p in (hint, vendor, None)]  # None: the dataset guesses
    attempts += [(ref, p) for ref, _ in names for p in _LAST_RESORT_PROVIDERS]
    table = _table()
    for ref, provider_id in dict.fromkeys(attempts):
        found = table.find(ref, provider_id)
        if found is not None:
            return _price_of(rates_on(found, today))
    return None


def _names(model: str) -> list[tuple[str, str | None]]:
    """`model`, then without its vendor path and prefixes, each with the provider it names."""
    names: list[tuple[str, str | None]] = [(model, None)]
    vendor: str | None = None
    path, _, name = model.rpartition("/")
    if path:
        vendor = path.rsplit("/", 1)[-1].lower() or None
    stripped = True
    while stripped:
        stripped = False
        for prefix, named in _VENDOR_PREFIXES.items():
            if name.lower().startswith(prefix):
                name, stripped, vendor = name[len(prefix):], True, named or vendor
    if name != model:
        names.append((name, vendor))
    return names


_load: Callable[[], PriceTable] = from_dataset


def use_table(load: Callable[[], PriceTable]) -> None:
    """Get the dataset's table from `load` from now on (a worker: built in another process)."""
    global _load
    _load = load
    _table.cache_clear()
    dataset_price.cache_clear()


@functools.cache
def _table() -> PriceTable:
    return _load()


def preload() -> None:
    """Read the dataset now (a worker at start: its loader runs a child process, which must not
    happen on the event loop under a request), once: later lookups use what this read."""
    _table()


def _price_of(rates: Rates) -> Price | None:
    if rates.input is None and rates.output is None:
        return None  # priced per request, per second or per image: not per token
    return Price(input=rates.input or 0.0, output=rates.output or 0.0, cached_input=rates.cached_input,
                 cache_write=rates.cache_write, reasoning=rates.reasoning)

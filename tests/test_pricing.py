"""Prices: the cost of a response, shipped defaults, and the lookup by model name."""
from __future__ import annotations

import pytest

from tollway.core.accounting.pricing import DEFAULT_PRICES, FREE, Price, cost, default_price, upper_cost
from tollway.ext.usage import Usage


def test_cost_bills_fresh_cached_written_and_output_tokens_once_each():
    price = Price(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=200_000, cached_tokens=400_000, cache_write_tokens=100_000)
    # 500k fresh x $3 + 400k cached x $0.30 + 100k written x $3.75 + 200k out x $15
    assert cost(usage, price) == pytest.approx(1.5 + 0.12 + 0.375 + 3.0)


def test_cached_and_write_rates_default_to_the_input_rate():
    price = Price(input=2.0, output=8.0)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=500_000, cache_write_tokens=100_000)
    assert cost(usage, price) == pytest.approx(2.0)


def test_cost_of_nothing_and_of_free_models_is_zero():
    assert cost(Usage(), Price(input=5, output=5)) == 0.0
    assert cost(Usage(prompt_tokens=10, completion_tokens=10), FREE) == 0.0


def test_nonsense_usage_never_yields_negative_cost():
    price = Price(input=1.0, output=1.0, cached_input=0.5)
    assert cost(Usage(prompt_tokens=10, cached_tokens=50, completion_tokens=-5), price) >= 0.0


def test_upper_cost_bounds_every_split_of_the_same_token_counts():
    price = DEFAULT_PRICES["claude-sonnet-4"]
    bound = upper_cost(1000, 500, price)
    for cached, written in ((0, 0), (1000, 0), (0, 1000), (300, 700)):
        assert cost(Usage(1000, 500, 1500, cached_tokens=cached, cache_write_tokens=written), price) <= bound + 1e-12


@pytest.mark.parametrize(("model", "base"), [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ("GPT-4o", "gpt-4o"),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
    ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
    ("o1-preview", "o1"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
])
def test_default_price_by_longest_known_prefix(model, base):
    assert default_price(model) == DEFAULT_PRICES[base]


@pytest.mark.parametrize("model", ["gpt-4oz", "gpt-4.5-preview", "o10", "llama-3-8b", "my-finetune"])
def test_unknown_models_have_no_default_price(model):
    assert default_price(model) is None


def test_shipped_defaults_are_sane():
    for name, price in DEFAULT_PRICES.items():
        assert price.input > 0, name
        assert price.output >= 0, name
        if price.cached_input is not None:
            assert price.cached_input < price.input, name

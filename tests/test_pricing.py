"""Prices: the cost of a response per token class, the price dataset, and the policy's lookup."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import date

import pytest
from genai_prices import data_snapshot
from genai_prices.data import providers as DATASET
from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices, TimeOfDateConstraint

from tollway.core import config as config_mod
from tollway.core.accounting import pricing
from tollway.core.accounting.pricing import FREE, Price, cost, dataset_price, upper_cost
from tollway.core.limits.policy import LimitPolicy
from tollway.ext.usage import Usage

M = 1_000_000


def dataset_model(provider_id: str, model_id: str):
    """The dataset's own entry for a model: expected values read from the data, so they do not rot."""
    provider = next(p for p in DATASET if p.id == provider_id)
    return next(m for m in provider.models if m.id == model_id)


# -- cost: each token class once, at its own rate -------------------------------------------

def test_cost_bills_fresh_cached_written_and_output_tokens_once_each():
    price = Price(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75)
    usage = Usage(prompt_tokens=M, completion_tokens=200_000, cached_tokens=400_000, cache_write_tokens=100_000)
    # 500k fresh x $3 + 400k cached x $0.30 + 100k written x $3.75 + 200k out x $15
    assert cost(usage, price) == pytest.approx(1.5 + 0.12 + 0.375 + 3.0)


def test_reasoning_tokens_are_billed_at_the_reasoning_rate_and_only_once():
    price = Price(input=1.0, output=10.0, reasoning=20.0)
    # 1M completion tokens of which 400k reasoning: 600k x $10 + 400k x $20, not 1M x $10 + 400k x $20
    usage = Usage(prompt_tokens=0, completion_tokens=M, reasoning_tokens=400_000)
    assert cost(usage, price) == pytest.approx(6.0 + 8.0)


def test_reasoning_rate_defaults_to_the_output_rate():
    usage = Usage(prompt_tokens=100, completion_tokens=M, reasoning_tokens=700_000)
    assert cost(usage, Price(input=1.0, output=8.0)) == pytest.approx(8.0 + 100e-6)


def test_reasoning_beyond_the_completion_is_capped_at_it():
    price = Price(output=10.0, reasoning=20.0)
    assert cost(Usage(completion_tokens=M, reasoning_tokens=3 * M), price) == pytest.approx(20.0)


def test_cached_and_write_rates_default_to_the_input_rate():
    price = Price(input=2.0, output=8.0)
    usage = Usage(prompt_tokens=M, completion_tokens=0, cached_tokens=500_000, cache_write_tokens=100_000)
    assert cost(usage, price) == pytest.approx(2.0)


def test_cost_of_nothing_and_of_free_models_is_zero():
    assert cost(Usage(), Price(input=5, output=5)) == 0.0
    assert cost(Usage(prompt_tokens=10, completion_tokens=10), FREE) == 0.0


def test_nonsense_usage_never_yields_negative_cost():
    price = Price(input=1.0, output=1.0, cached_input=0.5, reasoning=2.0)
    assert cost(Usage(prompt_tokens=10, cached_tokens=50, completion_tokens=-5, reasoning_tokens=-3), price) >= 0.0
    assert cost(Usage(prompt_tokens=-10, cached_tokens=-50, cache_write_tokens=-1, completion_tokens=5,
                      reasoning_tokens=10), price) >= 0.0
    assert cost(Usage(prompt_tokens=10, completion_tokens=10), Price(input=-1.0, output=-1.0)) == 0.0


def test_an_upstreams_absurd_counts_are_capped_to_a_finite_cost():
    # An upstream's count is not bounded by anything (Cohere's billed search_units is any
    # JSON number): one answer of 1.7e308 units cost 9.5e307 USD, and two of them summed
    # in the ledger's rollup left float8's range (PostgreSQL refused the batch for good).
    rerank = Price(search_unit=0.56)
    capped = cost(Usage(units=pricing.MAX_COUNT, unit="search_unit"), rerank)
    assert capped == pytest.approx(0.56 * pricing.MAX_COUNT)
    for units in (1.7e308, float("inf")):
        assert cost(Usage(units=units, unit="search_unit"), rerank) == capped
    tokens = cost(Usage(prompt_tokens=10**40, completion_tokens=10**40, cached_tokens=10**40, reasoning_tokens=10**40),
                  Price(input=2.0, output=8.0))
    assert tokens is not None and tokens <= 2 * 8.0 * pricing.MAX_COUNT / M


@pytest.mark.parametrize(("usage", "price"), [
    (Usage(units=float("nan"), unit="search_unit"), Price(search_unit=0.002)),       # no number of units at all
    (Usage(units=1e12, unit="search_unit"), Price(search_unit=1e300)),               # past float's range: inf
    (Usage(prompt_tokens=1000), Price(input=1e300)),                                 # finite, but no sane cost
    (Usage(units=2, unit="image:1024x1024/hd"), Price(image={"*": 1e300})),
])
def test_a_cost_that_is_no_finite_sane_number_is_unpriced(usage, price):
    # never inf or NaN (or a number whose sum leaves float's range) into limits, budgets or
    # the ledger: recorded as unknown (null, counted in tollway_unpriced_requests_total)
    assert cost(usage, price) is None


def test_an_unpriceable_answer_is_recorded_unpriced_and_charges_limits_nothing():
    from tollway.core.accounting.pricebook import PriceBook
    from tollway.core.limits import policy as limits
    cfg = config_mod.loads(f"""
providers: [{{name: up, schema: fake}}]
models: [{{name: r, targets: [{{provider: up}}], price: {{search_unit: 1e300}}}}]
keys: [{{name: k, key_hash: "sha256:{'0' * 64}", limits: [{{cost_usd: 1, per: 1h}}]}}]
""")
    huge = Usage(units=1e12, unit="search_unit")
    assert PriceBook(cfg).cost("r", "r", huge) is None
    plan = LimitPolicy(cfg).plan(cfg.keys[0], "r")
    assert limits.used(plan, huge, cfg.models[0].price)[4] == 0.0  # counted $0, as any unpriced answer

@pytest.mark.parametrize("price", [
    Price(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75),
    Price(input=2.0, output=8.0, cached_input=0.5, reasoning=12.0),
])
def test_upper_cost_bounds_every_split_of_the_same_token_counts(price):
    bound = upper_cost(1000, 500, price)
    for cached, written in ((0, 0), (1000, 0), (0, 1000), (300, 700)):
        for reasoning in (0, 250, 500):
            usage = Usage(1000, 500, 1500, cached_tokens=cached, cache_write_tokens=written, reasoning_tokens=reasoning)
            assert cost(usage, price) <= bound + 1e-12


def test_a_configured_price_may_set_the_reasoning_rate():
    cfg = config_mod.loads("providers: [{name: up, schema: fake}]\n"
                           "models: [{name: r1, targets: [{provider: up}], price: {input: 1, output: 2, reasoning: 3}}]\n")
    assert cfg.models[0].price == Price(input=1.0, output=2.0, reasoning=3.0)


# -- the dataset -------------------------------------------------------------------------------

def test_gpt_4o_at_its_well_known_list_price():
    # Literal on purpose: OpenAI's gpt-4o has cost $2.50 in / $1.25 cached / $10 out per million since 2024-08.
    assert dataset_price("gpt-4o") == Price(input=2.50, output=10.00, cached_input=1.25)
    usage = Usage(prompt_tokens=M, completion_tokens=M, cached_tokens=M // 2, reasoning_tokens=0)
    assert cost(usage, dataset_price("gpt-4o")) == pytest.approx(0.5 * 2.50 + 0.5 * 1.25 + 10.00)


def test_claude_sonnet_4_prices_every_prompt_class():
    # Literal on purpose: Anthropic's list price, with the 5-minute cache write rate.
    price = dataset_price("claude-sonnet-4-20250514", "anthropic")
    assert price == Price(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75)


def test_a_reasoning_price_is_read_from_the_dataset():
    # Literal on purpose: Perplexity bills sonar-deep-research's reasoning tokens at $3, its answer at $8.
    price = dataset_price("perplexity/sonar-deep-research")
    assert price is not None and (price.output, price.reasoning) == (8.0, 3.0)
    usage = Usage(prompt_tokens=0, completion_tokens=M, reasoning_tokens=M // 4)
    assert cost(usage, price) == pytest.approx(0.75 * 8.0 + 0.25 * 3.0)


@pytest.mark.parametrize(("model", "provider", "same_as"), [
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", None, "claude-sonnet-4"),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "bedrock", "claude-sonnet-4"),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock", "claude-3-5-sonnet"),
    ("gpt-4o-mini-2024-07-18", None, "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "openai", "gpt-4o-mini"),
    ("openai/gpt-4o", None, "gpt-4o"),
    ("openai/gpt-4o", "openai", "gpt-4o"),
    ("GPT-4o", None, "gpt-4o"),
    ("gpt-4o", "azure_openai", "gpt-4o"),
    ("claude-3-5-sonnet@20240620", "vertex", "claude-3-5-sonnet"),
    ("gemini-2.5-flash", "gemini", "gemini-2.5-flash"),
])
def test_dated_prefixed_and_cloud_names_find_their_model(model, provider, same_as):
    found, base = dataset_price(model, provider), dataset_price(same_as)
    assert found is not None and base is not None
    assert (found.input, found.output, found.cached_input) == (base.input, base.output, base.cached_input)


def test_gpt_4o_mini_is_not_priced_as_gpt_4o():
    assert dataset_price("gpt-4o-mini-2024-07-18").input < dataset_price("gpt-4o").input


def test_tiered_prices_give_the_base_tier():
    info = dataset_model("google", "gemini-2.5-pro")
    assert isinstance(info.prices, ModelPrice) and isinstance(info.prices.input_mtok, TieredPrices)
    price = dataset_price("gemini-2.5-pro", "vertex")
    assert price.input == float(info.prices.input_mtok.base) == 1.25
    assert price.output == float(info.prices.output_mtok.base)


def test_a_dated_price_change_applies_from_its_start_date():
    info = dataset_model("openai", "o3")
    changes = [c for c in info.prices if isinstance(c.constraint, StartDateConstraint)]
    assert changes
    start = changes[-1].constraint.start_date
    before, after = dataset_price("o3", "openai", date.fromordinal(start.toordinal() - 1)), dataset_price("o3", "openai", start)
    assert after.input == float(changes[-1].prices.input_mtok) and after.output == float(changes[-1].prices.output_mtok)
    assert before.input == float(info.prices[0].prices.input_mtok) != after.input
    assert dataset_price("o3", "openai") == after  # no date: the newest price


def test_an_off_peak_discount_is_not_taken_for_the_full_price():
    info = dataset_model("deepseek", "deepseek-reasoner")
    assert any(isinstance(c.constraint, TimeOfDateConstraint) for c in info.prices)
    assert dataset_price("deepseek-reasoner").input == max(float(c.prices.input_mtok) for c in info.prices)


def test_embeddings_have_an_input_price_and_no_output_price():
    price = dataset_price("text-embedding-3-small")
    assert price is not None and price.input > 0 and price.output == 0.0


@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4oz", None), ("o10", None), ("llama-3-8b", None), ("my-finetune", None), ("my-finetune", "openai"),
    ("my-deployment", "azure_openai"), ("fake-model", "fake"), ("", None),
])
def test_models_the_dataset_does_not_know_have_no_price(model, provider):
    assert dataset_price(model, provider) is None


def test_only_the_shipped_snapshot_is_read_even_if_something_installed_fetched_prices():
    dataset_price.cache_clear()
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        assert dataset_price("gpt-4o") is not None
    finally:
        data_snapshot.set_custom_snapshot(None)
        dataset_price.cache_clear()


def test_the_dataset_is_imported_at_first_lookup_and_read_without_the_network():
    script = textwrap.dedent("""
        import socket, sys
        def refuse(*a, **k):
            raise AssertionError("network used")
        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.create_connection = socket.getaddrinfo = refuse
        from tollway.core.accounting.pricing import dataset_price
        assert "genai_prices" not in sys.modules
        assert dataset_price("gpt-4o").input == 2.5
        assert "genai_prices" in sys.modules
        import threading
        assert threading.active_count() == 1, threading.enumerate()
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# The hand-kept table the dataset replaced (as shipped until it did): every model in it must keep a price.
OLD_DEFAULTS: dict[str, tuple[float, float, float | None, float | None]] = {
    "gpt-5": (1.25, 10.00, 0.125, None), "gpt-5-mini": (0.25, 2.00, 0.025, None), "gpt-5-nano": (0.05, 0.40, 0.005, None),
    "gpt-4.1": (2.00, 8.00, 0.50, None), "gpt-4.1-mini": (0.40, 1.60, 0.10, None), "gpt-4.1-nano": (0.10, 0.40, 0.025, None),
    "gpt-4o": (2.50, 10.00, 1.25, None), "gpt-4o-mini": (0.15, 0.60, 0.075, None), "gpt-4-turbo": (10.00, 30.00, None, None),
    "gpt-4": (30.00, 60.00, None, None), "gpt-3.5-turbo": (0.50, 1.50, None, None), "o1": (15.00, 60.00, 7.50, None),
    "o1-mini": (1.10, 4.40, 0.55, None), "o3": (2.00, 8.00, 0.50, None), "o3-mini": (1.10, 4.40, 0.55, None),
    "o4-mini": (1.10, 4.40, 0.275, None), "text-embedding-3-small": (0.02, 0.0, None, None),
    "text-embedding-3-large": (0.13, 0.0, None, None), "text-embedding-ada-002": (0.10, 0.0, None, None),
    "claude-opus-4": (15.00, 75.00, 1.50, 18.75), "claude-sonnet-4": (3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": (3.00, 15.00, 0.30, 3.75), "claude-3-5-sonnet": (3.00, 15.00, 0.30, 3.75),
    "claude-3-5-haiku": (0.80, 4.00, 0.08, 1.00), "claude-haiku-4-5": (1.00, 5.00, 0.10, 1.25),
    "claude-3-haiku": (0.25, 1.25, 0.03, 0.30), "claude-3-opus": (15.00, 75.00, 1.50, 18.75),
    "gemini-2.5-pro": (1.25, 10.00, 0.31, None), "gemini-2.5-flash": (0.30, 2.50, 0.075, None),
    "gemini-2.5-flash-lite": (0.10, 0.40, 0.025, None), "gemini-2.0-flash": (0.10, 0.40, 0.025, None),
    "gemini-1.5-pro": (1.25, 5.00, None, None), "gemini-1.5-flash": (0.075, 0.30, None, None),
}
# Where the old table was wrong: Google cut the Gemini 2.5 cache-read prices (and lists one for 1.5 Flash).
OLD_TABLE_WAS_STALE = {"gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-1.5-flash"}


@pytest.mark.parametrize("model", sorted(OLD_DEFAULTS))
def test_every_model_of_the_old_table_keeps_its_price(model):
    inp, out, cached, written = OLD_DEFAULTS[model]
    price = dataset_price(model, today=date(2026, 11, 30))
    assert price is not None
    assert (price.input, price.output, price.cache_write) == (inp, out, written)
    if model in OLD_TABLE_WAS_STALE:
        assert price.cached_input is not None and price.cached_input < inp
    else:
        assert price.cached_input == cached


def test_dataset_prices_are_sane_for_every_known_chat_model():
    for model in OLD_DEFAULTS:
        price = dataset_price(model)
        assert price.input > 0 and price.output >= 0, model
        if price.cached_input is not None:
            assert price.cached_input < price.input, model


# -- the policy: known_price (None = unpriced) and price (FREE for the limiter) ---------------

POLICY_CONFIG = """
providers:
  - {name: up, schema: fake}
  - {name: aws, schema: bedrock, region: us-east-1}
  - {name: oai, schema: openai, base_url: "https://api.openai.com/v1", api_key: x}
models:
  - name: gpt-4o
    targets: [{provider: oai}]
    price: {input: 2.0, output: 10.0, reasoning: 12.0}
  - name: smart
    targets: [{provider: aws, model: "us.anthropic.claude-sonnet-4-20250514-v1:0"}, {provider: oai, model: gpt-4o-mini}]
  - name: gpt-4.1
    targets: [{provider: oai, model: my-finetune}]
  - name: mine
    targets: [{provider: oai}]
  - name: fake-only
    targets: [{provider: up, model: fake-echo-1}]
"""


@pytest.fixture
def policy():
    return LimitPolicy(config_mod.loads(POLICY_CONFIG), date(2026, 11, 30))


def test_what_only_the_builtin_fake_serves_is_free_not_unpriced(policy):
    assert policy.known_price("fake-only", "fake-echo-1") == FREE


def test_a_configured_price_wins_over_the_dataset(policy):
    assert policy.known_price("gpt-4o", "gpt-4o") == Price(input=2.0, output=10.0, reasoning=12.0)
    assert policy.price("gpt-4o", "anything") == Price(input=2.0, output=10.0, reasoning=12.0)


def test_the_upstream_model_is_priced_from_the_dataset_then_the_public_name(policy):
    assert policy.known_price("smart", "us.anthropic.claude-sonnet-4-20250514-v1:0") == dataset_price("claude-sonnet-4")
    assert policy.known_price("smart", "gpt-4o-mini").input == 0.15
    # the upstream name is unknown, the public one is not
    assert policy.known_price("gpt-4.1", "my-finetune") == dataset_price("gpt-4.1")
    assert policy.known_price("gpt-4.1") == dataset_price("gpt-4.1")


def test_an_unpriced_model_is_none_to_the_ledger_and_free_to_the_limiter(policy):
    assert policy.known_price("mine", "mine") is None
    assert policy.known_price("mine") is None
    assert policy.price("mine", "mine") == FREE
    assert policy.price("unknown-route", None) == FREE


def test_the_target_provider_is_the_dataset_hint(policy, monkeypatch):
    seen = []
    real = pricing.dataset_price
    monkeypatch.setattr("tollway.core.accounting.pricebook.dataset_price", lambda *a: seen.append(a) or real(*a))
    policy.known_price("smart", "us.anthropic.claude-sonnet-4-20250514-v1:0")
    assert seen[0] == ("us.anthropic.claude-sonnet-4-20250514-v1:0", "bedrock", date(2026, 11, 30))


def test_each_pair_is_looked_up_once(policy, monkeypatch):
    calls = []
    real = pricing.dataset_price
    monkeypatch.setattr("tollway.core.accounting.pricebook.dataset_price", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        assert policy.known_price("mine", "mine") is None
        assert policy.price("smart", "gpt-4o-mini").input == 0.15
    assert len(calls) == 3  # mine: upstream, then public name; smart: upstream only


def test_client_chosen_upstream_names_past_the_cache_bound_are_priced_as_their_route(monkeypatch):
    from tollway.core.accounting import pricebook
    monkeypatch.setattr(pricebook, "_MAX_CACHED", 3)
    book = pricebook.PriceBook(config_mod.loads("""
providers: [{name: oai, schema: openai, base_url: "https://api.openai.com/v1", api_key: x}]
models: [{name: gpt-4o, targets: [{provider: oai}], match: "^gpt-4o.*"}]
"""))
    lookups = []
    real = pricebook.dataset_price
    monkeypatch.setattr(pricebook, "dataset_price", lambda *a: lookups.append(a) or real(*a))
    for i in range(50):
        assert book.price("gpt-4o", f"gpt-4o-client-{i}") is not None
    assert len(lookups) < 10, "no dataset lookup per new client string once the cache is full"
    assert book.cost("gpt-4o", "anything", None) == 0.0, "no usage: nothing spent, priced or not"

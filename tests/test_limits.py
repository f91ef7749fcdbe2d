"""Limit policy and bucket arithmetic, sans-IO, with an injected clock."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.core import config as config_mod
from tollway.core.accounting.pricing import FREE, MAX_COUNT, Price
from tollway.core.kernels import BucketTable
from tollway.core.limits.policy import (
    Bucket,
    LimitPolicy,
    amounts,
    denial,
    rejection,
    reserve,
    settle,
    window_seconds,
)
from tollway.core.request import RequestHead
from tollway.ext.ratelimit import go_duration, ratelimit_headers
from tollway.ext.usage import Usage

HASH = "sha256:" + "0" * 64
PRICE = Price(input=2.0, output=10.0)

CONFIG = f"""
providers: [{{name: up, schema: fake}}]
models:
  - name: gpt-4o
    targets: [{{provider: up}}]
    price: {{input: 2.0, output: 10.0}}
    limits: [{{total_tokens: 2000000, per: 1m}}]
  - name: other
    targets: [{{provider: up}}]
teams:
  - name: search
    limits: [{{cost_usd: 500, per: 1d}}, {{requests: 5, per: 1s, model: other}}]
keys:
  - name: prod
    key_hash: "{HASH}"
    team: search
    limits:
      - {{requests: 600, per: 1m}}
      - {{total_tokens: 100000, per: 1m}}
      - {{concurrent: 20}}
      - {{output_tokens: 1000, per: 1h, model: gpt-4o}}
  - name: free
    key_hash: "sha256:{'1' * 64}"
rate_limits:
  default_max_tokens: 256
"""


@pytest.fixture(scope="module")
def cfg():
    return config_mod.loads(CONFIG)


@pytest.fixture(scope="module")
def policy(cfg):
    return LimitPolicy(cfg)


def key(cfg, name):
    return next(k for k in cfg.keys if k.name == name)


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("per", "seconds"), [("1s", 1), ("30s", 30), ("1m", 60), ("m", 60), ("2h", 7200),
                                               ("1d", 86400), ("0.5s", 0.5), ("366d", 366 * 86400)])
def test_window_seconds(per, seconds):
    assert window_seconds(per) == seconds


@pytest.mark.parametrize("per", ["", "1", "1w", "m1", "-1m", "0s", "1 minute", "9" * 400 + "d",
                                 "367d", "99999999999999d"])
def test_window_seconds_refuses_what_it_cannot_read(per):
    with pytest.raises(ValueError):
        window_seconds(per)


@pytest.mark.parametrize(("limit", "problem"), [
    ("{requests: 1}", "needs per"),
    ("{requests: 1, per: 1w}", "per must be"),
    ("{requests: 1, total_tokens: 2, per: 1m}", "exactly one"),
    ("{per: 1m}", "exactly one"),
    ("{concurrent: 2, per: 1m}", "takes no per"),
    ("{requests: 0, per: 1m}", "must be > 0"),
    ("{requests: .inf, per: 1m}", "must be a finite number"),
    ("{requests: 1, per: 1m, model: nope}", "unknown model 'nope'"),
])
def test_config_refuses_malformed_limits_with_path_and_line(limit, problem):
    text = CONFIG.replace("- {requests: 600, per: 1m}", f"- {limit}")
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.loads(text)
    assert problem in str(err.value)
    assert str(err.value).startswith("keys.prod.limits[0]")
    assert err.value.line == 1 + next(i for i, line in enumerate(text.splitlines()) if limit in line)


def test_config_refuses_the_same_limit_twice_on_one_owner():
    text = CONFIG.replace("- {requests: 600, per: 1m}", "- {total_tokens: 5, per: 1m}")
    with pytest.raises(config_mod.ConfigError, match=r"keys.prod.limits\[1\]: duplicate limit \(total_tokens per 1m\)"):
        config_mod.loads(text)


def test_config_refuses_model_field_on_a_models_own_limit():
    text = CONFIG.replace("limits: [{total_tokens: 2000000, per: 1m}]", "limits: [{total_tokens: 1, per: 1m, model: other}]")
    with pytest.raises(config_mod.ConfigError, match="belongs on key or team"):
        config_mod.loads(text)


# -- plans ---------------------------------------------------------------------------------

def test_plan_draws_on_key_team_model_and_pair_buckets(cfg, policy):
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    assert [b.id for b in plan.buckets] == [
        "key:prod:requests:60s", "key:prod:total_tokens:60s", "key:prod:concurrent:inflight",
        "key_model:prod/gpt-4o:output_tokens:3600s", "team:search:cost_usd:86400s", "model:gpt-4o:total_tokens:60s",
    ]
    assert plan.buckets[plan.header_requests].id == "key:prod:requests:60s"
    assert plan.buckets[plan.header_tokens].id == "key:prod:total_tokens:60s"


def test_pair_limits_apply_only_to_their_model(cfg, policy):
    ids = [b.id for b in policy.plan(key(cfg, "prod"), "other").buckets]
    assert "key_model:prod/gpt-4o:output_tokens:3600s" not in ids
    assert "team_model:search/other:requests:1s" in ids
    assert "model:gpt-4o:total_tokens:60s" not in ids


def test_a_key_without_limits_on_an_unlimited_model_has_an_empty_plan(cfg, policy):
    assert not policy.plan(key(cfg, "free"), "other")
    assert policy.plan(key(cfg, "free"), "gpt-4o")  # the model's own limit still applies


def test_policy_lists_every_bucket_once(policy):
    assert sorted(policy.buckets) == sorted({
        "key:prod:requests:60s", "key:prod:total_tokens:60s", "key:prod:concurrent:inflight",
        "key_model:prod/gpt-4o:output_tokens:3600s", "team:search:cost_usd:86400s",
        "team_model:search/other:requests:1s", "model:gpt-4o:total_tokens:60s",
    })


def test_price_prefers_config_then_the_price_dataset_then_free(policy):
    assert policy.price("gpt-4o", "anything") == Price(input=2.0, output=10.0)
    assert policy.price("other", "gpt-4o-mini-2024-07-18").input == 0.15
    assert policy.price("other", "my-finetune") == FREE


def test_output_bound(policy):
    assert policy.output_bound("chat", RequestHead(max_tokens=100)) == 100
    assert policy.output_bound("chat", RequestHead(max_completion_tokens=50, n=3)) == 150
    assert policy.output_bound("chat", RequestHead()) == 256
    assert policy.output_bound("responses", RequestHead(max_output_tokens=70)) == 70
    assert policy.output_bound("embeddings", RequestHead(max_tokens=100)) == 0


# -- reservation and settlement -----------------------------------------------------------

def test_reservation_per_measure_capped_at_capacity(cfg, policy):
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    r = reserve(plan, 300, 2000, PRICE)
    upper = (300 * 2.0 + 2000 * 10.0) / 1e6
    assert amounts(plan, r) == pytest.approx((1, 2300, 1, 1000, upper, 2300))  # output capped at the 1000/h pair limit


def test_a_nan_demand_takes_capacity_as_the_bucket_kernel_does(cfg, policy):
    # The Redis store takes `amounts` and charges `deltas`; the memory store's kernel caps in
    # the same NaN-safe order, so both backends take a whole bucket for a NaN, never a NaN.
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    r = (1.0, 300.0, math.nan, math.nan, math.nan, 1.0)
    assert amounts(plan, r) == (1, 100000, 1, 1000, 500, 2000000)  # every NaN: its capacity
    assert not any(math.isnan(d) for d in settle(plan, r, Usage(prompt_tokens=40, completion_tokens=5), PRICE))

def test_settle_refunds_unused_and_charges_excess(cfg, policy):
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    r = reserve(plan, 300, 200, PRICE)
    deltas = settle(plan, r, Usage(prompt_tokens=40, completion_tokens=500, total_tokens=540), PRICE)
    assert deltas == pytest.approx((0, 540 - 500, -1, 500 - 200, (40 * 2 + 500 * 10) / 1e6 - amounts(plan, r)[4], 40))


def test_settle_without_usage_refunds_all_tokens_but_keeps_the_request(cfg, policy):
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    r = reserve(plan, 300, 200, PRICE)
    deltas = settle(plan, r, None, PRICE)
    assert deltas == pytest.approx((0, -500, -1, -200, -amounts(plan, r)[4], -500))


def test_settle_takes_an_upstreams_counts_between_zero_and_max_count(cfg, policy):
    # A hostile upstream's negative counts must not refund more than was reserved, nor a
    # counts past any real answer's charge past what pricing counts (MAX_COUNT).
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    r = reserve(plan, 300, 200, PRICE)
    negative = Usage(prompt_tokens=-10**9, completion_tokens=-10**9, total_tokens=-7)
    assert settle(plan, r, negative, PRICE) == settle(plan, r, None, PRICE)
    huge = settle(plan, r, Usage(prompt_tokens=10**15, completion_tokens=10**15, total_tokens=10**15), PRICE)
    taken = amounts(plan, r)
    assert huge[1] == MAX_COUNT - taken[1] and huge[3] == MAX_COUNT - taken[3] and huge[5] == MAX_COUNT - taken[5]


def test_denial_names_the_bucket_with_the_longest_wait(cfg, policy):
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    wanted = (1, 500, 1, 100, 0.01, 500)
    levels = (0.5, 100, 5, 1000, 500, 2e6)
    d = denial(plan, wanted, levels)
    assert d.bucket.id == "key:prod:total_tokens:60s"
    assert d.wait == pytest.approx(400 / (100000 / 60))
    with pytest.raises(ValueError):
        denial(plan, wanted, (10, 1e6, 5, 1000, 500, 2e6))


def test_rate_limit_rejection_is_openai_shaped():
    b = Bucket("key:prod:total_tokens:60s", "key", "prod", "total_tokens", 1000, 60)
    err = rejection(denial_of(b, level=100, amount=400), "gpt-4o")
    assert (err.status, err.type, err.code) == (429, "tokens", "rate_limit_exceeded")
    assert "Limit 1000, Used 900, Requested 400" in err.message
    headers = dict(err.headers)
    assert headers["retry-after-ms"] == "18000"  # 300 tokens at 1000/60 per second
    assert headers["retry-after"] == "18"
    assert "x-should-retry" not in headers


def test_exhausted_budget_is_insufficient_quota_and_says_not_to_retry_soon():
    b = Bucket("team:search:cost_usd:86400s", "team", "search", "cost_usd", 500, 86400)
    err = rejection(denial_of(b, level=-2.0, amount=0.5), "gpt-4o")
    assert (err.status, err.type, err.code) == (429, "insufficient_quota", "insufficient_quota")
    headers = dict(err.headers)
    assert int(headers["retry-after"]) == math.ceil(2.5 / (500 / 86400))
    assert headers["x-should-retry"] == "false"


def test_concurrency_rejection_suggests_a_short_retry():
    b = Bucket("key:prod:concurrent:inflight", "key", "prod", "concurrent", 2, 0)
    err = rejection(denial_of(b, level=0, amount=1), "gpt-4o")
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert dict(err.headers)["retry-after-ms"] == "1000"


def denial_of(bucket, level, amount):
    from tollway.core.limits.policy import Plan
    return denial(Plan((bucket,), -1, -1), (amount,), (level,))


def test_ratelimit_headers_in_openais_format(cfg, policy):
    plan = policy.plan(key(cfg, "prod"), "gpt-4o")
    levels = (599, 99_000.4, 19, 900, 499, 1.9e6)
    assert ratelimit_headers(plan.header_specs, levels) == [
        ("x-ratelimit-limit-requests", "600"), ("x-ratelimit-remaining-requests", "599"),
        ("x-ratelimit-reset-requests", "100ms"),
        ("x-ratelimit-limit-tokens", "100000"), ("x-ratelimit-remaining-tokens", "99000"),
        ("x-ratelimit-reset-tokens", "600ms"),  # 999.6 tokens at 1666.7/s, rounded up
    ]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (0.0061, "7ms"), (1, "1s"), (17.28, "17.28s"),
                                               (360, "6m0s"), (3723.5, "1h2m3.5s")])
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text


# -- the arithmetic through the bucket table, clock injected ------------------------------

def admit(table, slots, amounts, now):
    return table.try_take(slots, amounts, now) == 0.0


def test_refill_is_continuous_and_burst_is_one_capacity():
    table = BucketTable()
    rpm = table.add(60, 1.0)  # 60 per minute
    assert sum(admit(table, [rpm], [1], 0.0) for _ in range(100)) == 60
    assert not admit(table, [rpm], [1], 0.5)
    assert admit(table, [rpm], [1], 1.0)


def test_a_burst_straddling_a_window_edge_gets_one_limit_not_two():
    table = BucketTable()
    rpm = table.add(60, 1.0)
    # idle long enough to be full, then hammer from 59.9s to 60.1s: a fixed window would
    # admit 60 before the minute turns and 60 after.
    admitted = sum(admit(table, [rpm], [1], 59.9 + i * 0.002) for i in range(100))
    assert admitted == 60


def test_settle_with_fewer_tokens_refunds_and_with_more_leaves_debt():
    table = BucketTable()
    tpm = table.add(1000, 1000 / 60)
    assert admit(table, [tpm], [800], 0.0)
    table.give(tpm, 800 - 100, 0.0)  # used 100 of 800
    assert table.level(tpm, 0.0) == pytest.approx(900)
    assert admit(table, [tpm], [900], 0.0)
    table.take(tpm, 300, 0.0)  # used 300 more than reserved
    assert table.level(tpm, 0.0) == pytest.approx(-300)
    assert table.try_take([tpm], [1], 0.0) == pytest.approx(301 / (1000 / 60))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2.0), st.integers(1, 400), st.floats(0, 1)), min_size=1, max_size=300))
def test_usage_never_exceeds_capacity_plus_refill_when_reservations_bound_usage(reqs):
    """The documented bound: usage in [0, T] <= capacity * (1 + T / window)."""
    capacity, window = 1000.0, 10.0
    table = BucketTable()
    slot = table.add(capacity, capacity / window)
    now, used = 0.0, 0.0
    for gap, reserved, fraction in reqs:
        now += gap
        if table.try_take([slot], [reserved], now) == 0.0:
            real = int(reserved * fraction)  # usage at most the reservation
            table.give(slot, reserved - real, now)
            used += real
    assert used <= capacity * (1 + now / window) + 1e-6

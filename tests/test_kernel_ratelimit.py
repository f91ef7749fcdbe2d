"""OpenAI's rate-limit header formats, against the pure twin and the compiled kernel."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.ratelimit as pure_ratelimit
from tests.kernels_fixture import compiled_or_skip

REQUESTS = (0, ("x-ratelimit-limit-requests", "600"), "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests", 600.0, 10.0)
TOKENS = (1, ("x-ratelimit-limit-tokens", "100000"), "x-ratelimit-remaining-tokens",
          "x-ratelimit-reset-tokens", 100000.0, 100000 / 60)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0061, "7ms"), (0.9994, "1000ms"), (1, "1s"), (17.28, "17.28s"), (59.9996, "1m0s"),
    (360, "6m0s"), (3723.5, "1h2m3.5s"), (90061.001, "25h1m1.001s"), (math.inf, "never"),
])
def test_go_duration(ratelimit_impl, seconds, text):
    assert ratelimit_impl.go_duration(seconds) == text


def test_a_nan_duration_is_an_error_in_both_twins(ratelimit_impl):
    with pytest.raises(ValueError):
        ratelimit_impl.go_duration(math.nan)


def test_headers_in_openais_format(ratelimit_impl):
    assert ratelimit_impl.ratelimit_headers((REQUESTS, TOKENS), (599, 99_000.4)) == [
        ("x-ratelimit-limit-requests", "600"), ("x-ratelimit-remaining-requests", "599"),
        ("x-ratelimit-reset-requests", "100ms"),
        ("x-ratelimit-limit-tokens", "100000"), ("x-ratelimit-remaining-tokens", "99000"),
        ("x-ratelimit-reset-tokens", "600ms"),  # 999.6 tokens at 1666.7/s, rounded up
    ]


def test_full_bucket_resets_now_and_debt_shows_nothing_remaining(ratelimit_impl):
    headers = dict(ratelimit_impl.ratelimit_headers((REQUESTS, TOKENS), (600.0, -5000.0)))
    assert headers["x-ratelimit-reset-requests"] == "0s"
    assert headers["x-ratelimit-remaining-requests"] == "600"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1m3s"  # 105000 tokens at 1666.7/s


def test_a_bucket_without_refill_resets_never_in_both_twins(ratelimit_impl):
    gauge_like = ((0, ("x-ratelimit-limit-requests", "5"), "r", "t", 5.0, 0.0),)
    assert ratelimit_impl.ratelimit_headers(gauge_like, (2.0,))[2] == ("t", "never")


def test_headers_read_levels_by_index_and_may_show_one_kind(ratelimit_impl):
    only_tokens = ((2,) + TOKENS[1:],)
    assert ratelimit_impl.ratelimit_headers(only_tokens, (0.0, 0.0, 100000.0)) == [
        ("x-ratelimit-limit-tokens", "100000"), ("x-ratelimit-remaining-tokens", "100000"),
        ("x-ratelimit-reset-tokens", "0s")]
    assert ratelimit_impl.ratelimit_headers((), (1.0,)) == []


# --- differential: both twins write the same text for any level -------------------------------

levels = st.one_of(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
                   st.floats(min_value=1e15, max_value=1e20), st.integers(-1000, 1000).map(float))
capacities = st.floats(min_value=1, max_value=1e18, allow_nan=False)
refills = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(level=levels, capacity=capacities, refill=refills)
def test_compiled_agrees_with_pure(level, capacity, refill):
    compiled = compiled_or_skip("ratelimit")
    spec = ((0, ("x-ratelimit-limit-tokens", f"{capacity:.0f}"), "r", "t", capacity, refill),)
    assert compiled.ratelimit_headers(spec, (level,)) == pure_ratelimit.ratelimit_headers(spec, (level,))


@settings(max_examples=500, deadline=None)
@given(seconds=st.one_of(st.floats(min_value=0, max_value=1e13, allow_nan=False),
                         st.integers(0, 10**7).map(lambda ms: ms / 1000), st.just(math.inf)))
def test_compiled_durations_agree_with_pure(seconds):
    compiled = compiled_or_skip("ratelimit")
    assert compiled.go_duration(seconds) == pure_ratelimit.go_duration(seconds)

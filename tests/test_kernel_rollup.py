"""The rollup kernel (the ledger's hourly sums), against the pure twin and the compiled kernel."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.rollup as pure_rollup
from tests.kernels_fixture import compiled_or_skip

# rows: (ts, key, team, status, error, cost, input, output)
SPEC = pure_rollup.Spec(ts=0, seconds=3600.0, owner=(1, 2), status=3, error=4, cost=5, counts=(6, 7))
H = 1_700_000_000 // 3600 * 3600  # an hour's start


def test_rows_are_summed_per_hour_and_owner_in_order_of_first_appearance(rollup_impl):
    rows = [
        (H + 1.5, "k1", "t", 200, None, 0.25, 10, 5),
        (H + 2.0, "k1", "t", 500, None, None, 3, 0),   # an error, unpriced
        (H + 3.0, "k2", None, 200, "client_closed", 0.5, 1, 1),  # an error label under a 200
        (H + 3599.999, "k1", "t", 200, None, 0.0, 1, 2),  # priced at zero
        (H + 3600.0, "k1", "t", 429, None, 1.0, 0, 0),  # the next hour
        (H + 4.0, "k2", "", 200, None, 0.125, 2, 2),  # "" and None are one owner
    ]
    got = rollup_impl.bucket_sums(rows, SPEC)
    assert list(got) == [(H, "k1", "t"), (H, "k2", ""), (H + 3600, "k1", "t")]
    assert got[(H, "k1", "t")] == [3, 1, 1, 14, 7, 0.25]
    assert got[(H, "k2", "")] == [2, 1, 0, 3, 3, 0.625]
    assert got[(H + 3600, "k1", "t")] == [1, 1, 0, 0, 0, 1.0]
    assert all(type(v) is int for sums in got.values() for v in sums[:-1])
    assert all(type(sums[-1]) is float for sums in got.values())


def test_no_rows_no_sums(rollup_impl):
    assert rollup_impl.bucket_sums([], SPEC) == {}


def test_counts_past_64_bits_are_summed_exactly(rollup_impl):
    big = 2**63 - 1
    rows = [(H + 1.0, "k", "t", 200, None, 0.5, big, 1), (H + 2.0, "k", "t", 200, None, 0.5, big, 1)]
    assert rollup_impl.bucket_sums(rows, SPEC) == {(H, "k", "t"): [2, 0, 0, 2 * big, 2, 1.0]}


def test_values_of_other_types_are_summed_as_python_would(rollup_impl):
    """An int cost, a bool count, a float status, a list row: what the twin's Python gives."""
    rows = [[H + 1.0, "k", "t", 404.0, None, 2, True, 1], (H + 2.0, "k", "t", 200, None, 0.5, 3, 1)]
    assert rollup_impl.bucket_sums(rows, SPEC) == {(H, "k", "t"): [2, 1, 0, 4, 2, 2.5]}


def test_a_row_too_short_is_an_index_error(rollup_impl):
    with pytest.raises(IndexError):
        rollup_impl.bucket_sums([(H + 1.0, "k", "t", 200, None, 0.5, 3)], SPEC)


def test_a_time_that_is_no_number_is_an_error_as_in_python(rollup_impl):
    with pytest.raises(ValueError):
        rollup_impl.bucket_sums([(math.nan, "k", "t", 200, None, 0.5, 3, 1)], SPEC)
    with pytest.raises(TypeError):
        rollup_impl.bucket_sums([("noon", "k", "t", 200, None, 0.5, 3, 1)], SPEC)


def test_negative_column_indexes_count_from_the_end_as_in_python(rollup_impl):
    spec = pure_rollup.Spec(ts=0, seconds=3600.0, owner=(1,), status=-5, error=-4, cost=-3, counts=(-2, -1))
    rows = [(H + 1.0, "k", "t", 503, None, 0.5, 3, 1)]
    assert rollup_impl.bucket_sums(rows, spec) == {(H, "k"): [1, 1, 0, 3, 1, 0.5]}


class _AlwaysEqual:
    """An owner whose == says yes to all while its hash tells them apart."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return self.n


class _NoTruth:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")


def test_owners_of_other_types_group_as_a_dictionary_groups_them(rollup_impl):
    spec = pure_rollup.Spec(ts=0, seconds=3600.0, owner=(1,), status=2, error=3, cost=4, counts=())
    a, b = _AlwaysEqual(1), _AlwaysEqual(2)
    got = rollup_impl.bucket_sums([(1.0, a, 200, None, 0.5), (2.0, b, 200, None, 0.5)], spec)
    assert [ident[1].n for ident in got] == [1, 2] and all(sums[0] == 1 for sums in got.values())


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_a_time_that_is_no_number_fails_before_its_owner_is_looked_at(rollup_impl, ts):
    spec = pure_rollup.Spec(ts=0, seconds=3600.0, owner=(1,), status=2, error=3, cost=4, counts=())
    with pytest.raises(ValueError):
        rollup_impl.bucket_sums([(ts, _NoTruth(), 200, None, 0.5)], spec)


_owner = st.sampled_from([None, "", "a", "b", "é"])
_row = st.tuples(
    st.one_of(st.floats(-1e10, 1e10, allow_nan=False), st.sampled_from([H - 1e-7, H + 3599.9999999, 0.0, -0.0])),
    _owner, _owner,
    st.sampled_from([200, 399, 400, 499, 500, -1]),
    st.sampled_from([None, "upstream_error"]),
    st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.just(0.0), st.just(1e-300)),
    st.integers(-(2**62), 2**62), st.integers(0, 2**40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_row, max_size=40), st.sampled_from([3600.0, 86400.0, 7.5]))
def test_the_kernel_and_its_twin_agree_to_the_bit(rows, seconds):
    compiled = compiled_or_skip("rollup")
    spec = SPEC._replace(seconds=seconds)
    pure, fast = pure_rollup.bucket_sums(rows, spec), compiled.bucket_sums(rows, spec)
    assert list(fast) == list(pure)
    for ident, sums in pure.items():
        assert fast[ident][:-1] == sums[:-1]
        assert math.copysign(1, fast[ident][-1]) == math.copysign(1, sums[-1])
        assert fast[ident][-1].hex() == sums[-1].hex()

"""Bucket table arithmetic with an injected clock, against the pure twin and the compiled kernel."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.buckets as pure_buckets
from tests.kernels_fixture import compiled_or_skip


@pytest.fixture
def table(buckets_impl):
    return buckets_impl.BucketTable()


def test_new_bucket_starts_full(table):
    slot = table.add(10, 2)
    assert table.level(slot, 0.0) == 10
    assert table.capacity(slot) == 10
    assert table.seconds_until_full(slot, 0.0) == 0.0


def test_slot_ids_are_sequential_and_grow_past_initial_size(table):
    slots = [table.add(i + 1, 1) for i in range(100)]
    assert slots == list(range(100))
    assert [table.capacity(s) for s in slots] == [float(i + 1) for i in range(100)]


def test_take_then_continuous_refill(table):
    slot = table.add(10, 2)
    assert table.try_take([slot], [10], 100.0) == 0.0
    assert table.level(slot, 100.0) == 0
    assert table.level(slot, 101.5) == pytest.approx(3.0)
    assert table.seconds_until_full(slot, 101.5) == pytest.approx(3.5)
    assert table.level(slot, 1000.0) == 10  # refill stops at capacity


def test_burst_up_to_capacity_then_wait(table):
    slot = table.add(5, 1)
    for _ in range(5):
        assert table.try_take([slot], [1], 0.0) == 0.0
    assert table.try_take([slot], [1], 0.0) == pytest.approx(1.0)
    assert table.try_take([slot], [1], 0.5) == pytest.approx(0.5)
    assert table.try_take([slot], [1], 1.0) == 0.0


def test_all_or_nothing_across_slots(table):
    requests = table.add(10, 1)
    tokens = table.add(100, 10)
    table.take(tokens, 95, 0.0)
    wait = table.try_take([requests, tokens], [1, 20], 0.0)
    assert wait == pytest.approx(1.5)  # tokens short by 15 at 10/s
    assert table.level(requests, 0.0) == 10  # nothing was taken from the slot that had room
    assert table.level(tokens, 0.0) == 5
    assert table.try_take([requests, tokens], [1, 20], 1.5) == 0.0
    assert table.level(requests, 1.5) == 9
    assert table.level(tokens, 1.5) == pytest.approx(0.0)


def test_wait_is_for_the_slowest_slot(table):
    a = table.add(10, 1)
    b = table.add(10, 5)
    table.take(a, 10, 0.0)
    table.take(b, 10, 0.0)
    assert table.try_take([a, b], [2, 5], 0.0) == pytest.approx(2.0)


def test_amount_above_capacity_never_fits(table):
    slot = table.add(10, 100)
    assert table.try_take([slot], [11], 0.0) == math.inf
    assert table.level(slot, 0.0) == 10


def test_gauge_never_refills(table):
    gauge = table.add(2, 0)
    assert table.try_take([gauge], [1], 0.0) == 0.0
    assert table.try_take([gauge], [1], 0.0) == 0.0
    assert table.try_take([gauge], [1], 1e9) == math.inf
    assert table.seconds_until_full(gauge, 1e9) == math.inf
    table.give(gauge, 1, 5.0)
    assert table.level(gauge, 1e9) == 1
    assert table.try_take([gauge], [1], 6.0) == 0.0


def test_give_is_capped_at_capacity(table):
    slot = table.add(10, 1)
    table.take(slot, 4, 0.0)
    table.give(slot, 100, 0.0)
    assert table.level(slot, 0.0) == 10


def test_take_goes_into_debt_repaid_by_refill(table):
    slot = table.add(10, 2)
    table.take(slot, 30, 0.0)
    assert table.level(slot, 0.0) == -20
    assert table.try_take([slot], [1], 0.0) == pytest.approx(10.5)
    assert table.level(slot, 10.0) == pytest.approx(0.0)
    assert table.seconds_until_full(slot, 10.0) == pytest.approx(5.0)


def test_time_going_backwards_refills_nothing(table):
    slot = table.add(10, 1)
    table.take(slot, 10, 100.0)
    assert table.level(slot, 50.0) == 0  # an older clock reading changes nothing
    table.give(slot, 1, 50.0)
    assert table.level(slot, 100.0) == 1
    assert table.level(slot, 102.0) == 3  # the stamp stayed at 100, not 50


def test_reconfigure_keeps_level_and_clamps(table):
    slot = table.add(100, 1)
    table.take(slot, 40, 0.0)
    table.reconfigure(slot, 200, 10)
    assert table.capacity(slot) == 200
    assert table.level(slot, 0.0) == 60
    assert table.level(slot, 1.0) == 70  # new refill rate applies
    table.reconfigure(slot, 50, 10)
    assert table.level(slot, 1.0) == 50


def test_reconfigure_carries_a_gauges_slots_in_flight(table):
    """A gauge's level is its free slots and never refills: a new limit keeps the slots in
    flight, not the free count (raised from 1 to 3 with none in flight, it had 1 free for good)."""
    gauge = table.add(1, 0)
    table.reconfigure(gauge, 3, 0)
    assert table.level(gauge, 0.0) == 3  # none in flight: all three free
    assert table.try_take([gauge], [1], 0.0) == 0.0
    assert table.try_take([gauge], [1], 0.0) == 0.0
    table.reconfigure(gauge, 1, 0)  # two in flight, one allowed
    assert table.level(gauge, 0.0) == -1
    assert table.try_take([gauge], [1], 0.0) == math.inf
    table.give(gauge, 1, 0.0)  # one of the two ends: still one in flight
    table.reconfigure(gauge, 4, 0)
    assert table.level(gauge, 0.0) == 3
    table.give(gauge, 1, 0.0)
    assert table.level(gauge, 0.0) == 4  # lowered then raised: no slot lost


def test_bad_arguments_raise(table):
    slot = table.add(1, 1)
    with pytest.raises(IndexError):
        table.level(slot + 1, 0.0)
    with pytest.raises(IndexError):
        table.try_take([-1], [1], 0.0)
    with pytest.raises(IndexError):
        table.give(7, 1, 0.0)
    with pytest.raises(ValueError):
        table.try_take([slot], [1, 2], 0.0)


def test_reserve_takes_demand_by_measure_capped_at_capacity(table):
    requests, tokens = table.add(10, 1), table.add(100, 10)
    demand = (1.0, 30.0, 150.0)  # indexed by measure
    assert table.reserve([requests, tokens], [0, 2], demand, 0.0) == 0.0
    assert table.levels([requests, tokens], 0.0) == (9.0, 0.0)  # 150 capped at the capacity 100
    assert table.reserve([requests, tokens], [0, 1], demand, 0.0) == pytest.approx(3.0)  # 30 tokens at 10/s
    assert table.levels([requests, tokens], 0.0) == (9.0, 0.0)  # all or nothing


def test_settle_charges_used_minus_reserved_per_measure(table):
    requests, tokens, gauge = table.add(10, 1), table.add(100, 10), table.add(2, 0)
    slots, measures = [requests, tokens, gauge], [0, 1, 2]
    reserved = (1.0, 60.0, 1.0)
    assert table.reserve(slots, measures, reserved, 0.0) == 0.0
    table.settle(slots, measures, reserved, (1.0, 20.0, 0.0), 0.0)  # refund 40 tokens, free the slot
    assert table.levels(slots, 0.0) == (9.0, 80.0, 2.0)
    table.settle([tokens], [1], (0.0, 10.0), (0.0, 130.0), 0.0)  # 120 more than reserved: debt
    assert table.level(tokens, 0.0) == -40.0
    assert table.level(tokens, 5.0) == 10.0  # repaid by refill


def test_settle_of_a_capped_reservation_charges_the_excess(table):
    tokens = table.add(100, 1)
    assert table.reserve([tokens], [0], (500.0,), 0.0) == 0.0  # capped: took 100
    table.settle([tokens], [0], (500.0,), (250.0,), 0.0)
    assert table.level(tokens, 0.0) == -150.0


def test_a_nan_demand_or_reservation_is_capped_at_capacity(table):
    # NaN compares false with everything: the cap must be written so that NaN takes the
    # capacity (`a if a < cap else cap`), in the kernel and its twin alike. `min(nan, cap)` is
    # NaN: a level of NaN refuses nothing ever again (a limit disabled for good).
    nan = math.nan
    tokens = table.add(10, 1)
    assert table.reserve([tokens], [0], (nan,), 0.0) == 0.0  # takes the whole bucket
    assert table.level(tokens, 0.0) == 0.0
    assert table.reserve([tokens], [0], (1.0,), 0.0) == pytest.approx(1.0)  # and it is empty
    table.settle([tokens], [0], (nan,), (3.0,), 0.0)  # reserved NaN: as the capacity it took
    assert table.level(tokens, 0.0) == 7.0


def test_a_nan_demand_takes_the_same_in_both_twins():
    compiled = compiled_or_skip("buckets")
    nan = math.nan
    seen = []
    for mod in (compiled, pure_buckets):
        table = mod.BucketTable()
        gate = mod.Gate(table, [table.add(10, 1), table.add(5, 0)], [0, 1])
        trace = [gate.reserve((nan, 1.0), 0.0), gate.reserve((1.0, nan), 0.5), gate.reserve((0.0, 0.0), 1.0)]
        gate.settle((nan, nan), (2.0, 1.0), 1.0)
        trace.append(gate.levels(1.0))
        seen.append(trace)
    assert seen[0] == seen[1] == [(0.0, 4.0), None, (1.0, 4.0), (9.0, 5.0)]

def test_decision_calls_reject_mismatched_lengths_and_bad_slots(table):
    slot = table.add(10, 1)
    with pytest.raises(ValueError):
        table.reserve([slot], [0, 1], (1.0, 1.0), 0.0)
    with pytest.raises(ValueError):
        table.settle([slot], [], (1.0,), (1.0,), 0.0)
    with pytest.raises(IndexError):
        table.reserve([slot, 9], [0, 0], (1.0,), 0.0)
    with pytest.raises(IndexError):
        table.levels([9], 0.0)
    assert table.level(slot, 0.0) == 10.0  # a failed call took nothing


# --- differential: random operation sequences on both twins ----------------------------------

amounts = st.floats(min_value=0, max_value=200, allow_nan=False)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("try_take"), st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True), st.lists(amounts, min_size=3, max_size=3)),
        st.tuples(st.just("reserve"), st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
                  st.lists(amounts, min_size=3, max_size=3)),
        st.tuples(st.just("settle"), st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
                  st.tuples(st.lists(amounts, min_size=3, max_size=3), st.lists(amounts, min_size=3, max_size=3))),
        st.tuples(st.just("levels"), st.lists(st.integers(0, 3), min_size=1, max_size=4), st.none()),
        st.tuples(st.just("give"), st.integers(0, 3), amounts),
        st.tuples(st.just("take"), st.integers(0, 3), amounts),
        st.tuples(st.just("reconfigure"), st.integers(0, 3), st.tuples(amounts, st.just(0.0) | st.floats(0, 50))),
        st.tuples(st.just("level"), st.integers(0, 3), st.none()),
        st.tuples(st.just("seconds_until_full"), st.integers(0, 3), st.none()),
    ),
    max_size=40,
)
clock_steps = st.lists(st.floats(min_value=-5, max_value=20, allow_nan=False), min_size=40, max_size=40)
specs = st.lists(st.tuples(st.floats(0, 100), st.sampled_from([0.0, 0.5, 1.0, 7.0])), min_size=4, max_size=4)


def run_ops(mod, spec, script, steps):
    table = mod.BucketTable()
    for capacity, refill in spec:
        table.add(capacity, refill)
    now, trace = 1000.0, []
    for (op, slot, arg), step in zip(script, steps):
        now += step  # negative steps: a clock that goes backwards
        if op == "try_take":
            trace.append(table.try_take(slot, arg[: len(slot)], now))
        elif op == "reserve":
            trace.append(table.reserve(slot, [s % 3 for s in slot], arg, now))
        elif op == "settle":
            trace.append(table.settle(slot, [s % 3 for s in slot], *arg, now))
        elif op == "levels":
            trace.append(table.levels(slot, now))
        elif op in ("give", "take"):
            trace.append(getattr(table, op)(slot, arg, now))
        elif op == "reconfigure":
            trace.append(table.reconfigure(slot, *arg))
        else:
            trace.append(getattr(table, op)(slot, now))
    trace.extend(table.level(s, now) for s in range(len(spec)))
    return trace


@settings(max_examples=300, deadline=None)
@given(spec=specs, script=ops, steps=clock_steps)
def test_compiled_agrees_with_pure(spec, script, steps):
    compiled = compiled_or_skip("buckets")
    assert run_ops(compiled, spec, script, steps) == run_ops(pure_buckets, spec, script, steps)


@settings(max_examples=200, deadline=None)
@given(spec=specs, script=ops, steps=clock_steps)
def test_levels_stay_within_capacity_and_waits_are_honest(buckets_impl, spec, script, steps):
    table = buckets_impl.BucketTable()
    for capacity, refill in spec:
        table.add(capacity, refill)
    now = 0.0
    for (op, slot, arg), step in zip(script, steps):
        now += abs(step)
        if op != "try_take":
            continue
        wanted = arg[: len(slot)]
        wait = table.try_take(slot, wanted, now)
        for s in range(len(spec)):
            assert table.level(s, now) <= table.capacity(s)
        if 0.0 < wait < math.inf:
            # After waiting, the same take succeeds (barring rounding at the boundary).
            assert table.try_take(slot, wanted, now + wait * (1 + 1e-9) + 1e-9) == 0.0
            now += wait * (1 + 1e-9) + 1e-9


# --- Gate: one plan's buckets, fixed once ------------------------------------------------------

def test_gate_reserves_all_or_nothing_and_returns_the_levels(buckets_impl):
    table = buckets_impl.BucketTable()
    requests, tokens = table.add(10, 1), table.add(100, 10)
    gate = buckets_impl.Gate(table, [requests, tokens], [0, 1])
    assert gate.reserve((1.0, 60.0), 0.0) == (9.0, 40.0)
    assert gate.reserve((1.0, 60.0), 0.0) is None  # 60 tokens do not fit: nothing taken
    assert gate.levels(0.0) == (9.0, 40.0)
    assert gate.reserve((1.0, 60.0), 2.0) == (9.0, 0.0)  # refilled 20 in 2 s; requests were full
    assert gate.reserve((1.0, 500.0), 20.0) == (9.0, 0.0)  # a demand above capacity takes a full bucket


def test_gate_settles_used_minus_reserved(buckets_impl):
    table = buckets_impl.BucketTable()
    tokens, gauge = table.add(100, 10), table.add(2, 0)
    gate = buckets_impl.Gate(table, [tokens, gauge], [1, 2])
    reserved = (1.0, 60.0, 1.0)
    assert gate.reserve(reserved, 0.0) == (40.0, 1.0)
    gate.settle(reserved, (1.0, 20.0, 0.0), 0.0)  # refund 40 tokens, free the slot
    assert gate.levels(0.0) == (80.0, 2.0)
    gate.settle((0.0, 10.0, 0.0), (0.0, 130.0, 0.0), 0.0)  # 120 more than reserved: debt
    assert gate.levels(0.0) == (-40.0, 2.0)


def test_gate_sees_a_table_that_grew_and_was_reconfigured(buckets_impl):
    table = buckets_impl.BucketTable()
    gate = buckets_impl.Gate(table, [table.add(10, 0)], [0])
    for _ in range(100):  # the table's storage moves as it grows
        table.add(1, 1)
    table.reconfigure(0, 5, 0)
    assert gate.reserve((2.0,), 0.0) == (3.0,)


def test_gate_rejects_bad_shapes(buckets_impl):
    table = buckets_impl.BucketTable()
    slot = table.add(10, 1)
    with pytest.raises(ValueError):
        buckets_impl.Gate(table, [slot], [0, 1])
    with pytest.raises(IndexError):
        buckets_impl.Gate(table, [slot, 4], [0, 0])
    gate = buckets_impl.Gate(table, [slot], [3])
    with pytest.raises(IndexError):
        gate.reserve((1.0, 1.0), 0.0)  # no demand for measure 3
    assert table.level(slot, 0.0) == 10.0


gate_ops = st.lists(st.tuples(st.sampled_from(["reserve", "settle"]), st.lists(amounts, min_size=3, max_size=3),
                              st.lists(amounts, min_size=3, max_size=3)), max_size=30)


def run_gate(mod, spec, script, steps):
    table = mod.BucketTable()
    slots = [table.add(capacity, refill) for capacity, refill in spec]
    gate = mod.Gate(table, slots, [s % 3 for s in slots])
    now, trace = 1000.0, []
    for (op, first, second), step in zip(script, steps):
        now += step
        if op == "reserve":
            trace.append(gate.reserve(tuple(first), now))
        else:
            trace.append(gate.settle(tuple(first), tuple(second), now))
    return trace + [gate.levels(now)]


@settings(max_examples=300, deadline=None)
@given(spec=specs, script=gate_ops, steps=clock_steps)
def test_compiled_gate_agrees_with_pure(spec, script, steps):
    compiled = compiled_or_skip("buckets")
    assert run_gate(compiled, spec, script, steps) == run_gate(pure_buckets, spec, script, steps)


def test_decisions_over_more_buckets_than_fit_on_the_stack(buckets_impl):
    # The compiled kernel keeps up to 8 buckets' scratch on the C stack and allocates beyond.
    table = buckets_impl.BucketTable()
    slots = [table.add(10, 0) for _ in range(12)]
    assert table.try_take(slots, [1.0] * 12, 0.0) == 0.0
    assert table.reserve(slots, [0] * 12, (2.0,), 0.0) == 0.0
    gate = buckets_impl.Gate(table, slots, [0] * 12)
    assert gate.reserve((3.0,), 0.0) == (4.0,) * 12
    assert gate.reserve((5.0,), 0.0) is None  # one short on every bucket: nothing taken
    assert table.try_take(slots, [4.0] * 11 + [5.0], 0.0) == math.inf  # a gauge never refills
    assert table.levels(slots, 0.0) == (4.0,) * 12


def test_out_of_contract_arguments_raise_in_both_twins(buckets_impl):
    # The compiled kernel skips bounds checks where it owns the indexes; where a caller's
    # sequence is indexed by a caller's value it checks, as Python does (no crash).
    table = buckets_impl.BucketTable()
    slot = table.add(10, 1)
    with pytest.raises(IndexError):
        table.settle([slot], [1_000_000], (1.0,), (1.0,), 0.0)
    with pytest.raises(IndexError):
        table.reserve([slot], [5], (1.0,), 0.0)
    with pytest.raises((TypeError, AttributeError)):
        buckets_impl.Gate(None, [0], [0])
    gate = buckets_impl.Gate(table, [slot], [0])
    with pytest.raises(TypeError):
        gate.reserve(None, 0.0)
    with pytest.raises(TypeError):
        gate.settle(None, (1.0,), 0.0)
    assert table.level(slot, 0.0) == 10.0


class GrowsTheTable:
    """A demand value whose conversion adds buckets (so the compiled table's storage moves)."""

    def __init__(self, table, value: float) -> None:
        self.table, self.value = table, value

    def __float__(self) -> float:
        for _ in range(1000):
            self.table.add(1, 1)
        return self.value


def test_a_conversion_that_grows_the_table_cannot_leave_stale_bucket_pointers(buckets_impl):
    table = buckets_impl.BucketTable()
    slot = table.add(10, 0)
    assert table.reserve([slot], [0], [GrowsTheTable(table, 3.0)], 0.0) == 0.0
    assert table.try_take([slot], [GrowsTheTable(table, 2.0)], 0.0) == 0.0
    gate = buckets_impl.Gate(table, [slot], [0])
    assert gate.reserve((GrowsTheTable(table, 1.0),), 0.0) == (4.0,)
    gate.settle((GrowsTheTable(table, 1.0),), (GrowsTheTable(table, 0.0),), 0.0)
    assert table.level(slot, 0.0) == 5.0 and len(table) == 1 + 5000

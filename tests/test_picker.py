"""The endpoint picker: scoring with fake load snapshots and chosen draws."""
import pytest

from tollway.core.routing.picker import PICKERS, Candidate, PrefixIndex, pick_least_inflight, pick_least_queue, pick_round_robin
from tollway.core.routing.replica_load import ReplicaLoad, parse_replica_load


def load(waiting=0.0, kv=0.0, running=0.0):
    return ReplicaLoad(waiting, running, kv)


def test_shorter_queue_wins():
    cands = [Candidate(load(waiting=12)), Candidate(load(waiting=1)), Candidate(load(waiting=5))]
    assert pick_least_queue(cands, 0.0, 0) == 1


def test_no_reported_load_breaks_the_pick():
    # A queue of +Inf (a hostile or broken replica) is dropped at the parse, and scores that are
    # no number still pick: the pick never raises on what replicas report.
    assert parse_replica_load("vllm:num_requests_waiting +Inf\nvllm:num_requests_running 2\n").waiting is None
    assert parse_replica_load("vllm:num_requests_waiting{a=\"1\"} 1e308\nvllm:num_requests_waiting{a=\"2\"} 1e308\n"
                              ).waiting < float("inf")
    cands = [Candidate(load(waiting=float("inf"))), Candidate(load(waiting=float("nan"))), Candidate(load(waiting=2))]
    assert pick_least_queue(cands, 0.5, 0) in (0, 1, 2)


def test_kv_cache_breaks_equal_queues():
    cands = [Candidate(load(kv=0.8)), Candidate(load(kv=0.1))]
    assert pick_least_queue(cands, 0.99, 0) == 1


def test_unscraped_endpoint_scores_neutral():
    # neutral (0.5 + 0.5) sits between a loaded endpoint and an idle one
    idle, busy, unknown = Candidate(load(0, 0.0)), Candidate(load(10, 0.9)), Candidate(None)
    assert pick_least_queue([busy, unknown], 0.0, 0) == 1
    assert pick_least_queue([unknown, idle], 0.0, 0) == 1


def test_ties_go_to_fewer_in_flight_then_to_the_draw():
    cands = [Candidate(load(), in_flight=3), Candidate(load(), in_flight=1), Candidate(load(), in_flight=1)]
    assert pick_least_queue(cands, 0.0, 0) == 1
    assert pick_least_queue(cands, 0.99, 0) == 2


def test_unavailable_endpoints_are_skipped_unless_all_are():
    cands = [Candidate(load(), available=False), Candidate(load(waiting=50))]
    assert pick_least_queue(cands, 0.0, 0) == 1
    everyone_down = [Candidate(load(waiting=9), available=False), Candidate(load(), available=False)]
    assert pick_least_queue(everyone_down, 0.0, 0) == 1


def test_prefix_affinity_wins_while_not_overloaded():
    warm, cold = Candidate(load(waiting=2), prefix_match=1.0), Candidate(load(waiting=0))
    assert pick_least_queue([warm, cold], 0.0, 0) == 0
    overloaded = Candidate(load(waiting=20), prefix_match=1.0)
    assert pick_least_queue([overloaded, cold], 0.0, 0) == 1


def test_least_inflight_and_round_robin():
    cands = [Candidate(None, in_flight=4), Candidate(None, in_flight=2), Candidate(None, in_flight=9, available=False)]
    assert pick_least_inflight(cands, 0.5, 0) == 1
    assert [pick_round_robin(cands, 0.0, t) for t in range(4)] == [0, 1, 0, 1]
    assert set(PICKERS) == {"least_queue", "least_inflight", "round_robin"}


def test_empty_pool_is_an_error():
    with pytest.raises(ValueError):
        pick_least_queue([], 0.0, 0)


def test_prefix_index_follows_the_shared_prefix():
    index = PrefixIndex(block=16, max_blocks=16)
    system = b'{"messages":[{"role":"system","content":"' + b"You are a careful assistant. " * 4
    a, b = index.blocks(system + b'Q1"}]}'), index.blocks(system + b'another question"}]}')
    assert a[:5] == b[:5] and a != b
    index.record(a, "http://r1")
    share = index.matches(b)["http://r1"]
    assert 0.5 < share < 1.0
    index.forget("http://r1")
    assert index.matches(b) == {}


def test_prefix_index_is_bounded():
    index = PrefixIndex(capacity=10, block=4, max_blocks=100)
    index.record(index.blocks(b'"prompt"' + b"x" * 400), "e")
    assert len(index._owner) == 10


def test_prefix_starts_at_the_prompt_not_the_model_name():
    index = PrefixIndex(block=8, max_blocks=4)
    assert index.blocks(b'{"model":"a","prompt":"same text here"}')[:2] == \
        index.blocks(b'{"model":"bbbbbbbbbb","prompt":"same text here"}')[:2]


VLLM_TEXT = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="0",model_name="llama-lora"} 2.0
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:gpu_cache_usage_perc{engine="0",model_name="llama-lora"} 0.5
process_cpu_seconds_total 12.5
"""


def test_vllm_metrics_are_summed_and_old_cache_name_is_understood():
    assert parse_replica_load(VLLM_TEXT) == ReplicaLoad(waiting=5.0, running=7.0, kv_cache=0.5)


def test_new_cache_name_wins_and_non_vllm_text_is_refused():
    text = VLLM_TEXT + 'vllm:kv_cache_usage_perc{model_name="llama"} 0.75\n'
    assert parse_replica_load(text).kv_cache == 0.75
    with pytest.raises(ValueError):
        parse_replica_load("process_cpu_seconds_total 1\n<html>not metrics</html>")

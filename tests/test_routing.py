"""The routing table and the retry walk, with chosen draws and an injected clock."""
import time
from collections import Counter

import pytest

from tollway.core.config import Retry, loads
from tollway.core.routing.retry import AttemptPlan, backoff, retry_after
from tollway.core.routing.table import RouteTable

CONFIG = """
providers:
  - {name: v1, schema: fake}
  - {name: v2, schema: fake}
  - {name: openai, schema: fake}
  - {name: anthropic, schema: fake}
models:
  - name: llama-3-8b
    targets:
      - {provider: v1, model: meta-llama/Meta-Llama-3-8B-Instruct, weight: 90}
      - {provider: v2, weight: 10}
  - name: smart
    targets:
      - {provider: openai, model: gpt-4o, priority: 0}
      - {provider: anthropic, model: claude-sonnet-4-5, priority: 1}
  - name: llama-family
    match: "llama-.*-(instruct|chat)"
    targets: [{provider: v2}]
"""


@pytest.fixture(scope="module")
def table():
    return RouteTable(loads(CONFIG))


def everyone(_name):
    return True


def test_weights_split_traffic_by_the_draw(table):
    route = table.resolve("llama-3-8b")
    picks = Counter(route.attempt_order(i / 1000, everyone)[0].provider for i in range(1000))
    assert picks == {"v1": 900, "v2": 100}


def test_upstream_model_override_and_default(table):
    route = table.resolve("llama-3-8b")
    v1, v2 = route.model.targets
    assert route.upstream_model(v1, "llama-3-8b") == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert route.upstream_model(v2, "llama-3-8b") == "llama-3-8b"


def test_priorities_give_the_fallback_order(table):
    assert [t.provider for t in table.resolve("smart").attempt_order(0.3, everyone)] == ["openai", "anthropic"]


def test_regex_match_is_a_fullmatch_and_exact_names_win(table):
    assert table.resolve("llama-2-70b-chat").name == "llama-family"
    assert table.resolve("llama-3-8b").name == "llama-3-8b"
    assert table.resolve("llama-2-70b-chat-v2") is None


def test_a_loose_match_never_serves_a_dot_segment():
    # The client's name goes upstream in a URL path where no `model:` renames it: "." or ".."
    # there would move the request out of the model's path, which a client must never choose.
    loose = RouteTable(loads(CONFIG.replace('match: "llama-.*-(instruct|chat)"', 'match: ".*"')))
    assert loose.resolve("anything").name == "llama-family"
    assert loose.resolve("..") is None and loose.resolve(".") is None and loose.resolve("...") is None
    assert loose.resolve("..x").name == "llama-family"  # not a dot segment: stays one segment, quoted


def test_ejected_target_is_skipped_inside_its_group(table):
    route = table.resolve("llama-3-8b")
    picks = {route.attempt_order(i / 100, lambda p: p != "v1")[0].provider for i in range(100)}
    assert picks == {"v2"}


def test_a_group_with_nothing_available_goes_last(table):
    order = table.resolve("smart").attempt_order(0.0, lambda p: p != "openai")
    assert [t.provider for t in order] == ["anthropic", "openai"]


POLICY = Retry(attempts=4, backoff_base=0.1, backoff_max=1.0, max_retry_after=5.0, deadline=10.0)


def test_walk_tries_each_fallback_once_without_waiting_then_backs_off():
    plan = AttemptPlan(["a", "b"], POLICY, started=0.0)
    assert plan.next(0.0, 0.5) == ("a", 0.0)
    plan.failed()
    assert plan.next(0.1, 0.5) == ("b", 0.0)
    plan.failed()
    target, wait = plan.next(0.2, 0.5)
    assert target == "a" and wait == pytest.approx(0.05)  # 0.5 * 0.1 * 2**0
    plan.failed()
    target, wait = plan.next(0.3, 0.5)
    assert target == "b" and wait == pytest.approx(0.05)
    plan.failed()
    assert plan.next(0.4, 0.5) is None, "the attempt budget is spent"


def test_retry_after_is_honoured_and_too_long_a_wait_ends_the_walk():
    plan = AttemptPlan(["a"], POLICY, started=0.0)
    plan.next(0.0, 0.0)
    plan.failed(retry_after=2.0)
    assert plan.next(0.0, 0.0) == ("a", 2.0)
    plan.failed(retry_after=60.0)
    assert plan.next(0.0, 0.0) is None


def test_no_wait_may_cross_the_deadline():
    plan = AttemptPlan(["a"], POLICY, started=0.0)
    plan.next(0.0, 0.0)
    plan.failed(retry_after=3.0)
    assert plan.next(7.5, 0.0) is None
    assert AttemptPlan(["a"], POLICY, started=0.0).next(10.0, 0.0) is None


def test_same_target_retries_are_free_and_immediate():
    plan = AttemptPlan(["pool"], Retry(attempts=1, deadline=10.0), started=0.0)
    assert plan.next(0.0, 0.0) == ("pool", 0.0)
    for _ in range(3):
        plan.failed(same_target=True)
        assert plan.next(0.0, 0.9) == ("pool", 0.0)
    plan.failed()
    assert plan.next(0.0, 0.0) is None


def test_backoff_is_full_jitter_and_capped():
    assert backoff(POLICY, 0, 0.0) == 0.0
    assert backoff(POLICY, 3, 0.999) == pytest.approx(0.7992)
    assert backoff(POLICY, 10, 0.5) == 0.5


def test_retry_after_header_forms():
    assert retry_after([("retry-after-ms", "1500"), ("retry-after", "9")], 0.0) == 1.5
    assert retry_after([("Retry-After", "3")], 0.0) == 3.0
    assert retry_after([("retry-after", "Wed, 21 Oct 2015 07:28:10 GMT")], 1445412480.0) == 10.0
    assert retry_after([("retry-after", "soon")], 0.0) is None
    assert retry_after([], 0.0) is None


def test_a_retry_after_date_past_what_a_datetime_holds_is_unreadable_not_a_crash():
    """An upstream's 503 with this header was a 500 to the client (OverflowError), its fallback never tried."""
    assert retry_after([("retry-after", "Wed, 21 Oct 99999999999 07:28:00 GMT")], 0.0) is None


def test_a_retry_after_date_in_zone_minus_0000_is_gmt_not_the_hosts_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # (a host nine hours ahead of UTC)
    time.tzset()
    try:
        assert retry_after([("retry-after", "Wed, 21 Oct 2015 07:28:10 -0000")], 1445412480.0) == 10.0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

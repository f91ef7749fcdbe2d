"""Outlier detection: the breaker state machine, driven by an injected clock."""
from tollway.core.config import OutlierDetection
from tollway.core.routing.health import EJECTED, HEALTHY, PROBING, HealthBoard, MemberHealth

POLICY = OutlierDetection(consecutive_failures=3, cool_down=10.0, max_cool_down=25.0)


def test_ejected_only_after_consecutive_failures():
    m = MemberHealth(POLICY)
    assert not m.failure(0.0) and not m.failure(1.0)
    assert m.state(1.0) == HEALTHY
    assert m.failure(2.0)
    assert m.state(2.0) == EJECTED and not m.available(11.9)


def test_a_success_resets_the_count():
    m = MemberHealth(POLICY)
    m.failure(0.0), m.failure(0.0)
    m.success()
    assert not m.failure(0.0) and m.state(0.0) == HEALTHY


def test_comes_back_by_itself_through_one_probe():
    m = MemberHealth(POLICY)
    for _ in range(3):
        m.failure(0.0)
    assert m.state(10.0) == PROBING and m.available(10.0)
    m.begin(10.0)
    assert not m.available(10.1), "only one probe at a time"
    m.success()
    assert m.state(10.2) == HEALTHY and m.available(10.2)


def test_failed_probe_doubles_the_cool_down_up_to_the_cap():
    m = MemberHealth(POLICY)
    for _ in range(3):
        m.failure(0.0)
    m.begin(10.0)
    assert m.failure(10.0)
    assert m.ejected_until == 30.0  # 10 + min(20, 25)
    m.begin(30.0)
    m.failure(30.0)
    assert m.ejected_until == 55.0  # 30 + min(40, 25)


def test_late_failures_while_ejected_do_not_extend_the_ejection():
    m = MemberHealth(POLICY)
    for _ in range(3):
        m.failure(0.0)
    assert not m.failure(5.0)  # a request sent before the ejection, failing now
    assert m.ejected_until == 10.0


def test_board_unknown_members_are_healthy_and_states_are_reported():
    board = HealthBoard(POLICY)
    assert board.available("never-seen", 0.0)
    for _ in range(3):
        board.member("a").failure(0.0)
    board.member("b").success()
    assert board.states(1.0) == {"a": EJECTED, "b": HEALTHY}
    board.forget({"b"})
    assert board.states(1.0) == {"b": HEALTHY}

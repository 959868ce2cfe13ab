"""`podium up`'s restart policy: a pure decision from the crash history."""

from __future__ import annotations

import pytest

from podium.stack import GiveUp, Restart, RestartPolicy

pytestmark = pytest.mark.unit


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, max_crashes=10, window_s=100)
    crashes: list[float] = []
    delays = []
    for t in range(6):
        crashes.append(float(t))
        decision = policy.decide(crashes, float(t))
        assert isinstance(decision, Restart)
        delays.append(decision.delay_s)
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_service_that_keeps_crashing_stops_the_stack() -> None:
    policy = RestartPolicy(max_crashes=3, window_s=60)
    decision = policy.decide([0.0, 1.0, 2.0, 3.0], 3.0)
    assert isinstance(decision, GiveUp) and "crashed 4 times in 60s" in decision.reason


def test_old_crashes_are_forgotten() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_crashes=3, window_s=60)
    decision = policy.decide([0.0, 1.0, 2.0, 200.0], 200.0)
    assert decision == Restart(0.5)

"""The idle fetch policy (podium_shared.idle): short waits while records come, longer
ones on Tansu once nothing has come for a while, none of it on Kafka."""

from __future__ import annotations

import inspect

import pytest
from aiokafka.consumer.fetcher import Fetcher

from podium_shared import Settings
from podium_shared.idle import IdleBackoff, IdlePolicy, fetch_wait_ms, idle_policy, set_fetch_wait
from podium_shared.runtime import idle_backoff

pytestmark = pytest.mark.unit

POLICY = IdlePolicy(floor_ms=5, ceiling_ms=250, grace_s=1.0, step_s=0.25)


@pytest.mark.parametrize(
    ("idle_s", "wait"),
    [
        (0.0, 5),
        (0.99, 5),
        (1.0, 10),
        (1.24, 10),
        (1.25, 20),
        (1.5, 40),
        (1.75, 80),
        (2.0, 160),
        (2.25, 250),
        (60.0, 250),
        (1e9, 250),
    ],
)
def test_the_wait_keeps_the_floor_through_the_grace_then_doubles_to_the_ceiling(
    idle_s: float, wait: int
) -> None:
    assert fetch_wait_ms(POLICY, idle_s) == wait


def test_a_policy_refuses_a_floor_above_its_ceiling() -> None:
    with pytest.raises(ValueError, match="floor_ms"):
        IdlePolicy(floor_ms=300, ceiling_ms=250)
    with pytest.raises(ValueError, match="step_s"):
        IdlePolicy(floor_ms=5, ceiling_ms=250, step_s=0)


def test_only_tansu_backs_off_and_only_where_the_idle_wait_is_longer() -> None:
    assert idle_policy("kafka", 500, 250) is None  # long polls are woken there
    assert idle_policy("tansu", 5, 0) is None  # turned off
    assert idle_policy("tansu", 300, 250) is None  # already longer than the idle wait
    assert idle_policy("tansu", 5, 250) == IdlePolicy(floor_ms=5, ceiling_ms=250)


def test_the_runtime_gives_tansu_consumers_a_backoff_and_kafka_consumers_none() -> None:
    tansu = Settings(broker="tansu", kafka_bootstrap="127.0.0.1:1")
    kafka = Settings(broker="kafka", kafka_bootstrap="127.0.0.1:1")
    backoff = idle_backoff(tansu, object())
    assert backoff is not None and backoff.policy == IdlePolicy(floor_ms=5, ceiling_ms=250)
    assert idle_backoff(kafka, object()) is None
    assert kafka.fetch_max_wait_ms == 500


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_backoff_grows_while_idle_and_resets_on_a_record() -> None:
    clock, applied = Clock(), []

    def apply(consumer: object, wait: int) -> bool:
        applied.append(wait)
        return True

    backoff = IdleBackoff(object(), POLICY, clock=clock, apply=apply)
    for _ in range(11):  # polls 100 ms apart, nothing arrives
        clock.now += 0.1
        backoff.polled(False)
    assert applied == [10]  # 1.1 s idle: the first doubling
    clock.now += 1.5
    backoff.polled(False)
    assert backoff.wait_ms == 250
    backoff.polled(True)  # a record: back to the hot path's wait at once
    assert applied == [10, 250, 5] and backoff.wait_ms == 5
    clock.now += 0.5
    backoff.polled(False)
    assert applied == [10, 250, 5]  # within the grace: unchanged, not set again


def test_a_consumer_not_started_keeps_its_wait() -> None:
    class NotStarted:
        _fetcher = None

    backoff = IdleBackoff(NotStarted(), POLICY, clock=Clock())
    backoff._last_record -= 10
    backoff.polled(False)
    assert backoff.wait_ms == 5  # nothing was set, so nothing is claimed


def test_the_wait_is_set_where_aiokafkas_fetcher_reads_it_for_each_request() -> None:
    # The pinned aiokafka keeps the wait in Fetcher._fetch_max_wait_ms and builds every
    # FetchRequest from it; if an upgrade moves it, this fails rather than the backoff
    # silently doing nothing.
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_max_wait_ms," in inspect.getsource(Fetcher._get_actions_per_node)

    class Consumer:
        class _fetcher:
            _fetch_max_wait_ms = 5

    c = Consumer()
    assert set_fetch_wait(c, 250) and c._fetcher._fetch_max_wait_ms == 250
    assert not set_fetch_wait(object(), 250)

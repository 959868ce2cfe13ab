"""How long an idle consumer's fetches wait on the broker (issue 18: an idle stack's CPU).

Apache Kafka answers a long poll as soon as a record arrives, so its consumers keep
one long ``fetch_max_wait_ms`` and cost almost nothing while idle: no policy here.
Tansu does not wake a waiting fetch when a record arrives, so the hot path needs a
short wait (5 ms: ~3 ms a hop), and that short wait is a busy poll once nothing comes:
~200 fetches a second per consumer, ~0.06 of a core per service and ~0.4 for the broker
in an idle stack. On Tansu a consumer therefore keeps the short wait while records
keep coming, and once it has seen none for ``grace_s`` lets the wait grow, doubling
every ``step_s``, up to ``ceiling_ms``. The first record after idleness is then late by
at most the current wait (``ceiling_ms`` once idle for a couple of seconds), on each
hop whose consumer was idle; a consumer that sees records every second or more often
never leaves the short wait. For ``ConsumeLoop`` a record counts only if the loop wrote
for it (handled or dead-lettered): memory reads every task's events and passes over a
`hello`'s, so for it a stream of those is idleness, and its memory steps see the bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class IdlePolicy:
    floor_ms: int  # the wait while records arrive (the hot path's)
    ceiling_ms: int  # the longest wait of an idle consumer: the bound on the first record's delay
    grace_s: float = 1.0  # idleness that keeps the floor
    step_s: float = 0.25  # the wait doubles every step after the grace

    def __post_init__(self) -> None:
        if not 0 < self.floor_ms <= self.ceiling_ms:
            raise ValueError("need 0 < floor_ms <= ceiling_ms")
        if self.grace_s < 0 or self.step_s <= 0:
            raise ValueError("need grace_s >= 0 and step_s > 0")


def fetch_wait_ms(policy: IdlePolicy, idle_s: float) -> int:
    """The fetch wait of a consumer that has seen no record for ``idle_s`` seconds."""
    if idle_s < policy.grace_s:
        return policy.floor_ms
    doublings = int((idle_s - policy.grace_s) / policy.step_s) + 1
    if doublings >= 32:  # far past any ceiling; keeps the shift small
        return policy.ceiling_ms
    return min(policy.ceiling_ms, policy.floor_ms << doublings)


def idle_policy(
    broker: str | None, fetch_max_wait_ms: int, idle_max_wait_ms: int
) -> IdlePolicy | None:
    """The policy for a broker: None where long polls are woken (Kafka), or where the
    idle wait is not longer than the configured one (nothing to grow into)."""
    if broker != "tansu" or idle_max_wait_ms <= fetch_max_wait_ms:
        return None
    return IdlePolicy(floor_ms=fetch_max_wait_ms, ceiling_ms=idle_max_wait_ms)


def set_fetch_wait(consumer: Any, wait_ms: int) -> bool:
    """Set a started aiokafka consumer's fetch wait for its next fetch requests. aiokafka
    (pinned in uv.lock) has no public setter: its fetcher reads ``_fetch_max_wait_ms`` for
    every request it builds (tests/unit/test_idle.py pins that). False if it has none."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = wait_ms
    return True


class IdleBackoff:
    """Applies an ``IdlePolicy`` to one consumer; a consume loop calls ``polled`` after
    every fetch it makes."""

    def __init__(
        self,
        consumer: Any,
        policy: IdlePolicy,
        clock: Callable[[], float] = time.monotonic,
        apply: Callable[[Any, int], bool] = set_fetch_wait,
    ) -> None:
        self._consumer = consumer
        self.policy = policy
        self._clock = clock
        self._apply = apply
        self._last_record = clock()
        self.wait_ms = policy.floor_ms

    def polled(self, got_records: bool) -> None:
        """Note one fetch's result; change the consumer's wait if the policy says so."""
        now = self._clock()
        if got_records:
            self._last_record = now
        wait = fetch_wait_ms(self.policy, now - self._last_record)
        if wait != self.wait_ms and self._apply(self._consumer, wait):
            self.wait_ms = wait

"""An open circuit says when its next trial is, and recovery does not retry before then."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from podium_contracts import RetryPolicy, StepError, StepFailed, StepRequested
from podium_executor.breaker import Breakers
from podium_executor.capabilities import BUILTINS
from podium_executor.capabilities.drills import make_drills
from podium_executor.service import Executor
from podium_recovery import RecoverySettings, Retry, decide
from podium_recovery.decisions import retry_delay
from podium_shared import Topics

pytestmark = pytest.mark.unit
# BUILTINS plus the drills (the file-less ``fail`` only: any root will do).
CAPS = {**BUILTINS, **{c.name: c for c in make_drills(Path("."))}}

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Eight attempts within about 5 s: the policy that lost every task to a 30 s circuit.
QUICK = RetryPolicy(max_attempts=8, initial_s=0.05, max_s=2.0, jitter=False)


def down() -> StepRequested:
    return StepRequested(
        task_id="t",
        step_id="s",
        workflow="w",
        capability="fail",
        pool="p",
        input={"error": "retryable", "message": "down"},
        idempotency_key="t/s",
    )


def failed(attempt: int, retry_after_s: float | None) -> StepFailed:
    error = StepError(
        type="unavailable", message="open", error_class="retryable", retry_after_s=retry_after_s
    )
    request = down().model_copy(update={"attempt": attempt, "retry": QUICK})
    return StepFailed.for_step(request, error=error, duration_ms=1.0)


async def test_an_open_circuit_reports_when_its_next_trial_is() -> None:
    clock = [100.0]
    breakers = Breakers(failures=2, cooldown_s=30, clock=lambda: clock[0])
    ex = Executor(CAPS, Topics("t"), breakers=breakers)
    first = await ex.run_step(down())
    await ex.run_step(down())  # the second failure opens the circuit
    clock[0] += 12
    blocked = await ex.run_step(down())
    assert isinstance(first, StepFailed) and first.error.retry_after_s is None
    assert isinstance(blocked, StepFailed)
    assert (blocked.error.type, blocked.error.error_class) == ("unavailable", "retryable")
    assert blocked.error.retry_after_s == pytest.approx(18.0)
    # The hint travels in the message: what recovery reads is what the executor said.
    assert StepFailed.model_validate_json(blocked.model_dump_json()).error.retry_after_s == 18.0


def test_recovery_waits_for_the_retry_after_not_just_the_backoff() -> None:
    d = decide(failed(attempt=1, retry_after_s=18.0), QUICK, NOW, random.Random(1))
    assert isinstance(d, Retry)
    assert d.delay_s == 18.0 and d.due_at == NOW + timedelta(seconds=18)
    # Without the hint, the same failure comes back after the 50 ms backoff.
    plain = decide(failed(attempt=1, retry_after_s=None), QUICK, NOW, random.Random(1))
    assert isinstance(plain, Retry) and plain.delay_s == pytest.approx(0.05)


def test_a_backoff_longer_than_the_retry_after_wins() -> None:
    d = decide(failed(attempt=7, retry_after_s=0.0), QUICK, NOW, random.Random(1))
    assert isinstance(d, Retry) and d.delay_s == 2.0  # 0.05 * 2**6 capped at max_s


def test_the_retry_after_is_capped_and_attempts_still_run_out() -> None:
    d = decide(failed(1, 86_400.0), QUICK, NOW, random.Random(1), retry_after_cap_s=60)
    assert isinstance(d, Retry) and d.delay_s == 60
    assert not isinstance(decide(failed(8, 5.0), QUICK, NOW, random.Random(1)), Retry)
    assert RecoverySettings().retry_after_cap_s == 600


@pytest.mark.parametrize(
    ("backoff", "after", "cap", "expected"),
    [(1.0, None, 600, 1.0), (1.0, 30.0, 600, 30.0), (40.0, 30.0, 600, 40.0), (1.0, 900, 600, 600)],
)
def test_retry_delay(backoff: float, after: float | None, cap: float, expected: float) -> None:
    assert retry_delay(backoff, after, cap) == expected

"""Recovery's decision function: retry or abandon, when, and where."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from podium_contracts import FallbackPolicy, RetryPolicy, StepError, StepFailed, StepRequested
from podium_recovery import Abandon, RecoverySettings, Retry, Why, backoff_delay, decide

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEFAULTS = RecoverySettings(max_attempts=3, initial_s=1.0, max_s=30.0).default_policy()


def failure(
    attempt: int = 1,
    error_class: str = "retryable",
    retry: RetryPolicy | None = None,
    fallback: FallbackPolicy | None = None,
    pool: str = "default",
    model: str | None = "small",
) -> StepFailed:
    request = StepRequested(
        task_id="t1",
        step_id="s1",
        workflow="wf",
        capability="flaky",
        pool=pool,
        attempt=attempt,
        idempotency_key="t1/s1",
        model=model,
        retry=retry,
        fallback=fallback,
    )
    return StepFailed.for_step(
        request,
        error=StepError(type="unavailable", message="down", error_class=error_class),  # type: ignore[arg-type]
        duration_ms=1.0,
    )


def test_a_retryable_error_is_retried_on_the_same_pool_with_the_next_attempt() -> None:
    d = decide(failure(attempt=1), DEFAULTS, NOW, random.Random(1))
    assert isinstance(d, Retry)
    assert (d.attempt, d.pool, d.model, d.fallback) == (2, "default", "small", False)
    assert d.due_at == NOW + timedelta(seconds=d.delay_s)
    assert d.request(failure(attempt=1).request).attempt == 2


def test_a_fatal_error_is_abandoned_at_once_whatever_the_policy() -> None:
    d = decide(
        failure(error_class="fatal", retry=RetryPolicy(max_attempts=10)),
        DEFAULTS,
        NOW,
        random.Random(1),
    )
    assert d == Abandon(Why.FATAL, 1)
    assert "fatal" in d.detail


@pytest.mark.parametrize(("max_attempts", "attempt"), [(3, 3), (1, 1), (5, 7)])
def test_exhausted_attempts_abandon(max_attempts: int, attempt: int) -> None:
    d = decide(
        failure(attempt=attempt, retry=RetryPolicy(max_attempts=max_attempts)),
        DEFAULTS,
        NOW,
        random.Random(1),
    )
    assert d == Abandon(Why.EXHAUSTED, attempt)


def test_without_a_policy_the_defaults_apply() -> None:
    rng = random.Random(7)
    assert isinstance(decide(failure(attempt=2), DEFAULTS, NOW, rng), Retry)
    assert decide(failure(attempt=3), DEFAULTS, NOW, rng) == Abandon(Why.EXHAUSTED, 3)
    one = RecoverySettings(max_attempts=1).default_policy()
    assert decide(failure(attempt=1), one, NOW, rng) == Abandon(Why.EXHAUSTED, 1)


def test_exponential_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=3.0, jitter=False)
    rng = random.Random(0)
    assert [backoff_delay(policy, n, rng) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff_delay(policy, 100, rng) == 3.0  # no overflow on large attempts


def test_fixed_backoff_is_constant() -> None:
    policy = RetryPolicy(backoff="fixed", initial_s=2.0, max_s=60.0, jitter=False)
    assert {backoff_delay(policy, n, random.Random(0)) for n in range(1, 10)} == {2.0}


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)])
def test_equal_jitter_stays_between_half_and_the_full_delay(attempt: int, ceiling: float) -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=10.0, jitter=True)
    rng = random.Random(42)
    delays = [backoff_delay(policy, attempt, rng, "equal") for _ in range(2000)]
    assert min(delays) >= ceiling / 2 and max(delays) <= ceiling
    # jitter spreads: both halves of the random range are used
    assert min(delays) < ceiling * 0.55 and max(delays) > ceiling * 0.95


def test_full_jitter_spans_zero_to_the_delay() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=10.0)
    rng = random.Random(42)
    delays = [backoff_delay(policy, 3, rng, "full") for _ in range(2000)]
    assert 0 <= min(delays) < 0.2 and 3.8 < max(delays) <= 4.0


def test_a_seeded_random_makes_the_decision_reproducible() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=30.0)
    a = decide(failure(attempt=2, retry=policy), DEFAULTS, NOW, random.Random(99))
    b = decide(failure(attempt=2, retry=policy), DEFAULTS, NOW, random.Random(99))
    c = decide(failure(attempt=2, retry=policy), DEFAULTS, NOW, random.Random(100))
    assert isinstance(a, Retry) and isinstance(c, Retry)
    assert a == b and a.delay_s != c.delay_s
    assert 1.0 <= a.delay_s <= 2.0


def test_the_fallback_takes_over_after_its_number_of_failed_attempts() -> None:
    retry = RetryPolicy(max_attempts=5, jitter=False)
    fallback = FallbackPolicy(pool="backup", model="large", after_attempts=2)
    first = decide(failure(1, retry=retry, fallback=fallback), DEFAULTS, NOW, random.Random(0))
    assert isinstance(first, Retry)
    assert (first.pool, first.model, first.fallback) == ("default", "small", False)
    second = decide(failure(2, retry=retry, fallback=fallback), DEFAULTS, NOW, random.Random(0))
    assert isinstance(second, Retry)
    assert (second.attempt, second.pool, second.model, second.fallback) == (
        3,
        "backup",
        "large",
        True,
    )
    # already on the fallback pool: it stays there, and it is not a new switch
    later = decide(
        failure(3, retry=retry, fallback=fallback, pool="backup", model="large"),
        DEFAULTS,
        NOW,
        random.Random(0),
    )
    assert isinstance(later, Retry)
    assert (later.pool, later.model, later.fallback) == ("backup", "large", False)


def test_a_model_only_fallback_keeps_the_pool() -> None:
    fallback = FallbackPolicy(model="large", after_attempts=1)
    d = decide(failure(1, fallback=fallback), DEFAULTS, NOW, random.Random(0))
    assert isinstance(d, Retry)
    assert (d.pool, d.model, d.fallback) == ("default", "large", True)


def test_exhausted_attempts_abandon_even_on_the_fallback() -> None:
    retry = RetryPolicy(max_attempts=3)
    fallback = FallbackPolicy(pool="backup", after_attempts=1)
    d = decide(
        failure(3, retry=retry, fallback=fallback, pool="backup"), DEFAULTS, NOW, random.Random(0)
    )
    assert d == Abandon(Why.EXHAUSTED, 3)


def test_settings_refuse_an_initial_delay_over_the_cap() -> None:
    with pytest.raises(ValidationError, match="INITIAL_S"):
        RecoverySettings(initial_s=60.0, max_s=30.0)

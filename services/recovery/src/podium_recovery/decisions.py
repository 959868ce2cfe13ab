"""What to do with a failed step: a plain function of the failure, the default
policy, the time and a random source, so every branch is testable without a
broker or a clock.

- a fatal error abandons the step at once;
- a retryable error is retried while ``attempt < retry.max_attempts``, after an
  exponential (or fixed) backoff capped at ``max_s``, with jitter, and never
  before the error's ``retry_after_s`` (an open circuit's next trial; capped);
- once ``fallback.after_attempts`` attempts have failed, the retry goes to the
  fallback pool and/or model;
- otherwise (attempts exhausted) the step is abandoned;
- whatever the policy says, a step gets at most ``caps.max_attempts`` attempts
  and a task's steps at most ``caps.max_task_retries`` retries in all; past
  either cap the step is abandoned, the detail naming the cap and its value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from podium_contracts import FallbackPolicy, RetryPolicy, StepFailed, StepRequested
from podium_recovery.settings import (
    DEFAULT_CAPS,
    MAX_ATTEMPTS_CAP,
    MAX_TASK_RETRIES,
    JitterMode,
    RetryCaps,
)


class Why(StrEnum):
    FATAL = "fatal"  # the error says a retry cannot help
    EXHAUSTED = "exhausted"  # retryable, but the policy's attempts are used up
    LIMIT = "limit"  # the policy allows more, but a PODIUM_RECOVERY_MAX_* cap does not


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the step again: attempt ``attempt`` on ``pool`` at ``due_at``."""

    attempt: int
    delay_s: float
    due_at: datetime
    pool: str
    model: str | None
    fallback: bool  # pool or model switched to the fallback's

    def request(self, failed: StepRequested) -> StepRequested:
        """The StepRequested this retry dispatches."""
        return failed.model_copy(
            update={"attempt": self.attempt, "pool": self.pool, "model": self.model}
        )


@dataclass(frozen=True, slots=True)
class Abandon:
    """Give up: dead-letter the request and tell the router."""

    why: Why
    attempts: int
    limit: str = ""  # with Why.LIMIT: which cap, and its value

    @property
    def detail(self) -> str:
        if self.why is Why.FATAL:
            return f"fatal error on attempt {self.attempts}"
        if self.why is Why.LIMIT:
            return f"{self.attempts} attempt(s) failed; {self.limit}"
        return f"{self.attempts} attempt(s) failed, the policy's maximum"


Decision = Retry | Abandon


def backoff_delay(
    policy: RetryPolicy, failed_attempt: int, rng: random.Random, mode: JitterMode = "equal"
) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
    if policy.backoff == "fixed":
        ceiling = policy.initial_s
    else:
        # 2**99 is still a finite float; the cap keeps the result sane.
        ceiling = policy.initial_s * 2.0 ** (max(failed_attempt, 1) - 1)
    ceiling = min(ceiling, policy.max_s)
    if not policy.jitter:
        return ceiling
    if mode == "full":
        return rng.uniform(0.0, ceiling)
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def falls_back(fallback: FallbackPolicy | None, failed_attempts: int) -> bool:
    """Whether the next attempt goes to the fallback pool/model."""
    return (
        fallback is not None
        and (fallback.pool is not None or fallback.model is not None)
        and failed_attempts >= fallback.after_attempts
    )


def retry_delay(backoff_s: float, retry_after_s: float | None, cap_s: float) -> float:
    """The backoff, or longer if the failure said when trying again can work.

    Retries that come sooner land on the same open circuit and use up the
    policy's attempts within seconds; the cap keeps a wrong hint from parking
    a step for hours."""
    if retry_after_s is None:
        return backoff_s
    return max(backoff_s, min(retry_after_s, cap_s))


def retry_cap(attempt: int, wanted: int, task_retries: int, caps: RetryCaps) -> str | None:
    """Which cap forbids another attempt after ``attempt`` failed, or None.
    ``wanted`` is the attempts the step's policy allows."""
    if attempt >= caps.max_attempts:
        return f"its policy allows {wanted}, {MAX_ATTEMPTS_CAP} is {caps.max_attempts}"
    if task_retries >= caps.max_task_retries:
        return (
            f"the task's steps were retried {task_retries} time(s),"
            f" {MAX_TASK_RETRIES} is {caps.max_task_retries}"
        )
    return None


def decide(
    failure: StepFailed,
    defaults: RetryPolicy,
    now: datetime,
    rng: random.Random,
    jitter: JitterMode = "equal",
    retry_after_cap_s: float = 600.0,
    caps: RetryCaps = DEFAULT_CAPS,
    task_retries: int = 0,
) -> Decision:
    """Retry (when, where) or abandon (why) a failed step; ``task_retries`` is how
    many retries of the task's steps were scheduled before this failure."""
    attempt = failure.attempt
    if failure.error.error_class == "fatal":
        return Abandon(Why.FATAL, attempt)
    policy = failure.request.retry or defaults
    if attempt >= policy.max_attempts:
        return Abandon(Why.EXHAUSTED, attempt)
    over = retry_cap(attempt, policy.max_attempts, task_retries, caps)
    if over:
        return Abandon(Why.LIMIT, attempt, over)
    delay = retry_delay(
        backoff_delay(policy, attempt, rng, jitter), failure.error.retry_after_s, retry_after_cap_s
    )
    request = failure.request
    pool, model, switched = request.pool, request.model, False
    fallback = request.fallback
    if fallback is not None and falls_back(fallback, attempt):
        pool = fallback.pool or pool
        model = fallback.model or model
        switched = (pool, model) != (request.pool, request.model)
    return Retry(
        attempt=attempt + 1,
        delay_s=delay,
        due_at=now + timedelta(seconds=delay),
        pool=pool,
        model=model,
        fallback=switched,
    )

"""Recovery's own settings (``PODIUM_RECOVERY_*``), beside the shared ``Settings``:
the retry policy for steps that carry none, the caps on any policy, and the timer
loop's pace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from podium_contracts import RetryPolicy

JitterMode = Literal["full", "equal"]

MAX_ATTEMPTS_CAP = "PODIUM_RECOVERY_MAX_ATTEMPTS_CAP"
MAX_TASK_RETRIES = "PODIUM_RECOVERY_MAX_TASK_RETRIES"


@dataclass(frozen=True, slots=True)
class RetryCaps:
    """Bounds on retries whatever a workflow's policy asks: attempts of one step
    (a workflow may ask up to 100), and retries of all one task's steps together."""

    max_attempts: int = 10
    max_task_retries: int = 100


DEFAULT_CAPS = RetryCaps()


class RecoverySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODIUM_RECOVERY_", extra="ignore")

    max_attempts: int = Field(default=3, ge=1, le=100, description="for steps without a policy")
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_s: float = Field(default=1.0, gt=0, le=3600)
    max_s: float = Field(default=30.0, gt=0, le=86_400)
    jitter: bool = True
    # equal: half the delay fixed, half random (a retry never comes at once);
    # full: anywhere in [0, delay] (spreads a thundering herd widest).
    jitter_mode: JitterMode = "equal"
    retry_after_cap_s: float = Field(
        default=600.0, gt=0, le=86_400, description="longest wait a failure's retry-after sets"
    )
    # A workflow's author, not the operator, picks its retry policy (up to 100
    # attempts); each attempt costs a provider call, so the operator bounds it.
    # 10 attempts with the default backoff span minutes, past most outages
    # worth waiting out in a step.
    max_attempts_cap: int = Field(
        default=DEFAULT_CAPS.max_attempts,
        ge=1,
        le=100,
        description="most attempts any step gets, whatever its policy asks",
    )
    # Attempts are capped per step, so a task of many steps could still retry
    # without end in practice; this bounds the task as a whole.
    max_task_retries: int = Field(
        default=DEFAULT_CAPS.max_task_retries,
        ge=0,
        le=1_000_000,
        description="retries of all one task's steps together",
    )
    timer_interval_s: float = Field(
        default=0.1, gt=0, le=60, description="due-timer poll while a timer is near"
    )
    # With no timer due sooner, the loop looks this often (issue 18: an idle recovery
    # polled its table ten times a second); a timer it schedules itself wakes it at once.
    timer_idle_s: float = Field(default=1.0, gt=0, le=60, description="due-timer poll, idle")
    timer_batch: int = Field(default=500, ge=1, le=10_000, description="timers fired per tx")

    @model_validator(mode="after")
    def _bounds(self) -> RecoverySettings:
        if self.initial_s > self.max_s:
            raise ValueError(
                f"PODIUM_RECOVERY_INITIAL_S ({self.initial_s}) is over "
                f"PODIUM_RECOVERY_MAX_S ({self.max_s})"
            )
        if self.max_attempts > self.max_attempts_cap:
            raise ValueError(
                f"PODIUM_RECOVERY_MAX_ATTEMPTS ({self.max_attempts}) is over "
                f"{MAX_ATTEMPTS_CAP} ({self.max_attempts_cap})"
            )
        return self

    def caps(self) -> RetryCaps:
        return RetryCaps(max_attempts=self.max_attempts_cap, max_task_retries=self.max_task_retries)

    def default_policy(self) -> RetryPolicy:
        """The policy for a step whose workflow names none."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            initial_s=self.initial_s,
            max_s=self.max_s,
            jitter=self.jitter,
        )

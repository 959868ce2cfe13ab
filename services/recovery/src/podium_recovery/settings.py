"""Recovery's own settings (``PODIUM_RECOVERY_*``), beside the shared ``Settings``:
the retry policy for steps that carry none, and the timer loop's pace."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from podium_contracts import RetryPolicy

JitterMode = Literal["full", "equal"]


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
    timer_interval_s: float = Field(default=0.1, gt=0, le=60, description="due-timer poll")
    timer_batch: int = Field(default=500, ge=1, le=10_000, description="timers fired per tx")

    @model_validator(mode="after")
    def _bounds(self) -> RecoverySettings:
        if self.initial_s > self.max_s:
            raise ValueError(
                f"PODIUM_RECOVERY_INITIAL_S ({self.initial_s}) is over "
                f"PODIUM_RECOVERY_MAX_S ({self.max_s})"
            )
        return self

    def default_policy(self) -> RetryPolicy:
        """The policy for a step whose workflow names none."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            initial_s=self.initial_s,
            max_s=self.max_s,
            jitter=self.jitter,
        )

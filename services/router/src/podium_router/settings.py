"""The router's own settings (``PODIUM_ROUTER_*``), beside the shared ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_STEP_DISPATCHES = "PODIUM_ROUTER_MAX_STEP_DISPATCHES"
MAX_FANOUT = "PODIUM_ROUTER_MAX_FANOUT"
DEFAULT_MAX_STEP_DISPATCHES = 1000
DEFAULT_MAX_FANOUT = 100


@dataclass(frozen=True, slots=True)
class Limits:
    """What one task may make the router do, whatever its workflow's shape.

    ``max_step_dispatches`` counts every attempt of every step (first attempts,
    retries, fallbacks); ``max_fanout`` is how many of one task's steps may be
    in flight at once."""

    max_step_dispatches: int = DEFAULT_MAX_STEP_DISPATCHES
    max_fanout: int = DEFAULT_MAX_FANOUT


DEFAULT_LIMITS = Limits()


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODIUM_ROUTER_", extra="ignore")

    # Longer than the executor's own default (PODIUM_EXECUTOR_DEFAULT_TIMEOUT_S, 300 s), so a step
    # that is merely slow is reported by its executor first; this one catches the steps
    # whose request or result was lost, which nothing else would ever re-drive.
    step_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86_400,
        description="how long the watchdog waits for a step without `timeout:`",
    )
    # Every attempt is a row, a history line and a record on a pool's topic: a task
    # that could cause them without end would take the router and the pools with it.
    # 1000 is far above what any workflow podium ships needs, and still finite.
    max_step_dispatches: int = Field(
        default=DEFAULT_MAX_STEP_DISPATCHES,
        ge=1,
        le=1_000_000,
        description="step attempts (first, retries, fallbacks) one task may cause",
    )
    # Each step in flight holds a row, a watchdog timer and a slot of a pool's
    # concurrency, so one task's fan-out should not be able to take a whole pool.
    max_fanout: int = Field(
        default=DEFAULT_MAX_FANOUT,
        ge=1,
        le=10_000,
        description="steps of one task in flight at once; wider workflows are refused",
    )

    def limits(self) -> Limits:
        return Limits(max_step_dispatches=self.max_step_dispatches, max_fanout=self.max_fanout)

"""The router's own settings (``PODIUM_ROUTER_*``), beside the shared ``Settings``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

"""The api service's own settings (``PODIUM_API_*``), beside the shared ``Settings``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODIUM_API_", extra="ignore")

    # Loopback by default: exposing the API is a decision (compose sets 0.0.0.0).
    host: str = Field(default="127.0.0.1", description="address the HTTP server binds")
    port: int = Field(default=8780, ge=0, le=65_535, description="0: any free port")
    trace_url: str | None = Field(
        default=None,
        description="a Jaeger-compatible query API for runs' traces; unset: the span files",
    )
    page_max: int = Field(default=200, ge=1, le=1_000, description="largest page of runs")

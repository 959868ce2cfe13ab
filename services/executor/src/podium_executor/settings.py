"""The executor's own settings (``PODIUM_*``), beside the shared ``Settings``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True)

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODIUM_", extra="ignore")

    pool: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    concurrency: int = Field(default=16, ge=1, le=4096, description="steps in flight per replica")
    rate_limit_per_s: float | None = Field(
        default=None, gt=0, description="capability calls/s of the pool; unset: unlimited"
    )
    rate_limit_burst: int | None = Field(default=None, ge=1, description="default: the rate")
    breaker_failures: int = Field(
        default=5, ge=1, description="consecutive provider failures that open its circuit"
    )
    breaker_cooldown_s: float = Field(default=30.0, gt=0, description="open circuit's duration")
    default_timeout_s: float | None = Field(
        default=300.0, gt=0, description="for steps without timeout_s; unset: none"
    )
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="wait for in-flight steps on SIGTERM or revocation"
    )
    outbox_lease_s: float = Field(
        default=10.0, gt=0, description="a replica's claim on outbox rows expires after this"
    )
    plugins: str = Field(default="", description="extra capabilities: 'module:attr,...'")

    http_timeout_s: float = Field(default=30.0, gt=0)
    http_max_bytes: int = Field(default=1_048_576, ge=1, description="largest response body")

    llm_base_url: str | None = Field(
        default=None, description="OpenAI-compatible API root, e.g. https://api.openai.com/v1"
    )
    llm_api_key: SecretStr | None = None
    llm_model: str | None = None
    llm_timeout_s: float = Field(default=120.0, gt=0)
    llm_prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description='JSON: {"model": {"prompt": 0.15, "completion": 0.6}}'
    )

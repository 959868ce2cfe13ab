"""The executor's own settings (``PODIUM_EXECUTOR_*``), beside the shared ``Settings``.

Until this release they were read from ``PODIUM_<NAME>`` (``PODIUM_POOL``,
``PODIUM_CONCURRENCY``, ``PODIUM_LLM_BASE_URL``, ...). Compose files and users set
those, so each old name still works as a deprecated alias of its new one; where both
are set, ``PODIUM_EXECUTOR_<NAME>`` wins, and the executor logs a warning for each
old name it finds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from podium_executor.egress import parse_allow
from podium_shared.secrets import fill_from_files

PREFIX = "PODIUM_EXECUTOR_"
OLD_PREFIX = "PODIUM_"


def _variables(name: str) -> AliasChoices:
    """``PODIUM_EXECUTOR_<NAME>``, then the deprecated ``PODIUM_<NAME>``."""
    return AliasChoices(f"{PREFIX}{name.upper()}", f"{OLD_PREFIX}{name.upper()}")


class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True)

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


class ExecutorSettings(BaseSettings):
    # populate_by_name: code and tests pass fields by name, ExecutorSettings(pool="gpu").
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        extra="ignore",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=_variables),
    )

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
    status_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="how often the replica reports its breakers"
    )
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
    egress_allow: str = Field(
        default="",
        description="what tools may reach beyond public addresses: "
        "'host,host:port,10.0.0.0/8,[::1]:8080' (docs/security.md)",
    )

    @model_validator(mode="after")
    def _secrets_from_files(self) -> ExecutorSettings:
        fill_from_files(self, [("llm_api_key", "llm_api_key_file", f"{PREFIX}LLM_API_KEY")])
        return self

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow_parses(cls, value: str) -> str:
        parse_allow(value)  # BadAllowList is a ValueError: a clear error at start-up
        return value

    llm_base_url: str | None = Field(
        default=None, description="OpenAI-compatible API root, e.g. https://api.openai.com/v1"
    )
    llm_api_key: SecretStr | None = None
    # A file holding the key (mode 0600), kept out of the environment that child
    # processes and /proc/<pid>/environ expose; read once at start-up.
    llm_api_key_file: Path | None = None
    llm_model: str | None = None
    llm_timeout_s: float = Field(default=120.0, gt=0)
    llm_prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description='JSON: {"model": {"prompt": 0.15, "completion": 0.6}}'
    )

    # PODIUM_DRILLS and PODIUM_DRILLS_ROOT: read under these names (the _variables
    # generator's second choice), as tests and drills set them.
    drills: bool = Field(
        default=False, description="offer the drill capabilities (flaky, fail, effect.record)"
    )
    drills_root: Path | None = Field(
        default=None, description="the only tree the drills' files may be in; default: PODIUM_HOME"
    )


# Old names that are now shared settings of every service, meaning the same thing
# (``podium_shared.Settings``): setting one is not a deprecated use.
SHARED_NAMES = frozenset({"outbox_lease_s"})
# Settings whose PODIUM_<NAME> is their own name, not an old one.
OWN_NAMES = frozenset({"drills", "drills_root"})


def deprecated_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(old name, new name) of every deprecated ``PODIUM_<NAME>`` set in ``environ``."""
    upper = {k.upper() for k in environ}
    return [
        (f"{OLD_PREFIX}{name.upper()}", f"{PREFIX}{name.upper()}")
        for name in ExecutorSettings.model_fields
        if f"{OLD_PREFIX}{name.upper()}" in upper and name not in SHARED_NAMES | OWN_NAMES
    ]

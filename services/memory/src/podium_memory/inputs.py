"""What each memory capability accepts as its step input (strict: typos are errors)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from podium_memory.scopes import NAME, ScopeRef
from podium_memory.store import EntryType


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RememberInput(_Input):
    text: str = Field(min_length=1, max_length=100_000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    scope: ScopeRef | None = None
    ttl_s: float | None = Field(default=None, gt=0, description="shorter than the scope's TTL")


class RecallInput(_Input):
    query: str = Field(default="", max_length=4_000)
    limit: int | None = Field(default=None, ge=1, le=100)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    scopes: list[ScopeRef] | None = Field(default=None, max_length=8)
    types: list[EntryType] | None = None


class ForgetInput(_Input):
    """Exactly one of: ``ids`` (within ``scopes``), ``scopes``, or ``tenant``."""

    ids: list[int] | None = Field(default=None, min_length=1, max_length=1_000)
    scopes: list[ScopeRef] | None = Field(default=None, min_length=1, max_length=8)
    tenant: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_target(self) -> ForgetInput:
        if self.tenant is not None and (self.ids or self.scopes):
            raise ValueError("forget either a tenant, or ids/scopes, not both")
        if self.tenant is None and not self.ids and not self.scopes:
            raise ValueError("forget needs ids, scopes or tenant")
        return self


class TurnInput(_Input):
    role: str = Field(default="user", pattern=r"^[a-z][a-z_-]{0,31}$")
    text: str = Field(min_length=1, max_length=100_000)


class ConversationInput(_Input):
    session: str = Field(pattern=NAME)
    append: TurnInput | None = None
    window: int | None = Field(default=None, ge=1, le=200)

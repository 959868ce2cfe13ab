"""The memory service's own settings, read from ``PODIUM_MEMORY_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY = 86_400.0


class MemorySettings(BaseSettings):
    """Retention, ranking and conversation knobs; validated at start-up."""

    model_config = SettingsConfigDict(env_prefix="PODIUM_MEMORY_", extra="ignore")

    # Time to live per scope kind, in seconds; unset means "until forgotten".
    ttl_subject_s: float | None = Field(default=None, gt=0)
    ttl_project_s: float | None = Field(default=None, gt=0)
    ttl_workflow_s: float | None = Field(default=90 * DAY, gt=0)
    ttl_session_s: float | None = Field(default=30 * DAY, gt=0)
    max_entries_per_scope: int = Field(default=10_000, ge=1)
    purge_interval_s: float = Field(default=60.0, gt=0)
    purge_batch: int = Field(default=1_000, ge=1)
    # Recency weighting: an entry this old counts 1.5x, a fresh one 2x, an ancient one 1x.
    recency_half_life_s: float = Field(default=7 * DAY, gt=0)
    recall_limit: int = Field(default=5, ge=1, le=100)
    conversation_window: int = Field(default=10, ge=1, le=200)
    summary_max_chars: int = Field(default=2_000, ge=100, le=100_000)
    summarizer: Literal["extractive"] = "extractive"
    # Episodes remember who a task belonged to; forget that mapping after this long.
    task_owner_ttl_s: float = Field(default=7 * DAY, gt=0)

    def ttl_for(self, kind: str) -> float | None:
        """The TTL of a scope kind in seconds, or None for no expiry."""
        ttl: float | None = getattr(self, f"ttl_{kind}_s")
        return ttl

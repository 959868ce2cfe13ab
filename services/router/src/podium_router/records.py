"""Runs and steps as typed, immutable records: the repository builds them from
rows, so decisions never see a database row (or SQLite's naive datetimes).
A record's fields are its table's columns (state.py), name for name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from podium_router.state import RunStatus, StepStatus


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class Run:
    """One task's run: what it was asked, on which workflow version, how far it got."""

    task_id: str
    workflow: str
    workflow_version: int
    definition: dict[str, Any]  # the workflow version the run started on ({} if unknown)
    status: RunStatus
    tenant: str
    subject: str | None
    priority: int
    metadata: dict[str, Any]
    input: dict[str, Any]
    deadline: datetime | None
    budget_cost_usd: float | None
    budget_tokens: int | None
    cost_usd: float
    tokens: int
    accepted_at: datetime
    output: Any = None
    error: dict[str, Any] | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Run:
        return cls.from_columns(row._asdict())

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> Run:
        """The run of a row's columns, by name."""
        return cls(
            **{
                **columns,
                "status": RunStatus(columns["status"]),
                "deadline": aware(columns["deadline"]),
                "accepted_at": aware(columns["accepted_at"]),
                "finished_at": aware(columns["finished_at"]),
            }
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One dispatched step of a run, and its latest attempt."""

    task_id: str
    step_id: str
    capability: str
    pool: str
    model: str | None
    status: StepStatus
    attempts: int
    request: dict[str, Any]  # the StepRequested as sent, for the watchdog
    timeout_s: float | None  # how long the watchdog waits for a result
    deadline_at: datetime | None
    dispatched_at: datetime
    output: Any = None
    usage: dict[str, Any] | None = None
    duration_ms: float | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Step:
        return cls.from_columns(row._asdict())

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> Step:
        """The step of a row's columns, by name."""
        return cls(
            **{
                **columns,
                "status": StepStatus(columns["status"]),
                "deadline_at": aware(columns["deadline_at"]),
                "dispatched_at": aware(columns["dispatched_at"]),
                "finished_at": aware(columns["finished_at"]),
            }
        )

"""The router's durable state: one run per task, one row per step."""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa

metadata = sa.MetaData()


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class StepStatus(StrEnum):
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("workflow_version", sa.Integer, nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),  # the version the run started on
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)

run_steps = sa.Table(
    "run_steps",
    metadata,
    sa.Column("task_id", sa.String(200), sa.ForeignKey("runs.task_id"), primary_key=True),
    sa.Column("step_id", sa.String(200), primary_key=True),
    sa.Column("capability", sa.String(200), nullable=False),
    sa.Column("pool", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=True),
    sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)

"""The router's durable state: one run per task, one row per step, and an
append-only history of every transition (the audit trail).

Run:  accepted → running → completed | failed | cancelled
Step: dispatched → completed | failed (awaiting recovery) → dispatched (retry) … | abandoned
"""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa

metadata = sa.MetaData()


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    FAILED = "failed"  # reported failed or timed out; recovery decides what next
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"


TERMINAL_RUN = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
OPEN_STEP = {StepStatus.DISPATCHED, StepStatus.FAILED}  # a result may still settle it

Time = sa.DateTime(timezone=True)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False, index=True),
    sa.Column("workflow_version", sa.Integer, nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),  # the version the run started on
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("metadata", sa.JSON, nullable=False, default=dict),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("deadline", Time, nullable=True, index=True),
    sa.Column("budget_cost_usd", sa.Float, nullable=True),
    sa.Column("budget_tokens", sa.Integer, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("tokens", sa.Integer, nullable=False, default=0),
    sa.Column("accepted_at", Time, nullable=False, index=True),
    sa.Column("finished_at", Time, nullable=True),
)

run_steps = sa.Table(
    "run_steps",
    metadata,
    sa.Column("task_id", sa.String(200), sa.ForeignKey("runs.task_id"), primary_key=True),
    sa.Column("step_id", sa.String(200), primary_key=True),
    sa.Column("capability", sa.String(200), nullable=False),
    sa.Column("pool", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("request", sa.JSON, nullable=False),  # the StepRequested, for the watchdog
    sa.Column("timeout_s", sa.Float, nullable=True),
    sa.Column("deadline_at", Time, nullable=True, index=True),  # watchdog
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=True),
    sa.Column("dispatched_at", Time, nullable=False),
    sa.Column("finished_at", Time, nullable=True),
)

history = sa.Table(
    "history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(200), nullable=False, index=True),
    sa.Column("at", Time, nullable=False),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("step_id", sa.String(200), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=True),
    sa.Column("pool", sa.String(200), nullable=True),
    sa.Column("capability", sa.String(200), nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("workflow_version", sa.Integer, nullable=True),
    sa.Column("cause", sa.Text, nullable=False, default=""),
    sa.Column("next", sa.Text, nullable=False, default=""),
)

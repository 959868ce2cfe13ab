"""Recovery's tables: every failure it has seen with what it decided, and the
durable timers of the retries it has scheduled."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

failures = sa.Table(
    "failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(200), nullable=False, index=True),
    sa.Column("step_id", sa.String(200), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("error_type", sa.String(100), nullable=False),
    sa.Column("error_class", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),  # retry | abandon | duplicate
    sa.Column("dlq_record_id", sa.String(200), nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    # Added with retries; nullable so a database from the skeleton gains them in place.
    sa.Column("pool", sa.String(200), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),  # why abandoned, or where and when retried
    sa.Column("retry_pool", sa.String(200), nullable=True),
    sa.Column("retry_model", sa.String(200), nullable=True),
    sa.Column("delay_s", sa.Float, nullable=True),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
)

# One row per pending retry: the StepRequested to publish, fully encoded (its
# ce_id fixed when scheduled), and when. Firing moves the row into the outbox
# and deletes it in one transaction.
timers = sa.Table(
    "timers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("due_at", sa.Float, nullable=False, index=True),  # epoch seconds
    sa.Column("task_id", sa.String(200), nullable=False),
    sa.Column("step_id", sa.String(200), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("topic", sa.String(300), nullable=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=True),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("task_id", "step_id", "attempt", name="uq_timers_attempt"),
)

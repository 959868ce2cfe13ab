"""Recovery's own record of every failure it has seen and what it decided."""

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
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("dlq_record_id", sa.String(200), nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

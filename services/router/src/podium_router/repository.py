"""Reads and writes of the run state over one SQLAlchemy connection.

Rows are locked ``FOR UPDATE`` where two router replicas could race (on
PostgreSQL; SQLite has one writer and ignores the clause)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_router.state import RunStatus, StepStatus, history, run_steps, runs


class RunRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get_run(self, task_id: str, *, lock: bool = True) -> sa.Row[Any] | None:
        query = sa.select(runs).where(runs.c.task_id == task_id)
        if lock:
            query = query.with_for_update()
        return self.conn.execute(query).first()

    def steps(self, task_id: str) -> list[sa.Row[Any]]:
        return list(
            self.conn.execute(
                sa.select(run_steps)
                .where(run_steps.c.task_id == task_id)
                .order_by(run_steps.c.dispatched_at, run_steps.c.step_id)
            )
        )

    def get_step(self, task_id: str, step_id: str) -> sa.Row[Any] | None:
        return self.conn.execute(
            sa.select(run_steps).where(
                run_steps.c.task_id == task_id, run_steps.c.step_id == step_id
            )
        ).first()

    def add_run(self, **values: Any) -> None:
        self.conn.execute(runs.insert().values(status=RunStatus.RUNNING, **values))

    def update_run(self, task_id: str, **values: Any) -> None:
        self.conn.execute(runs.update().where(runs.c.task_id == task_id).values(**values))

    def finish_run(self, task_id: str, status: RunStatus, at: datetime, **values: Any) -> None:
        self.update_run(task_id, status=status, finished_at=at, **values)

    def add_step(self, **values: Any) -> None:
        self.conn.execute(
            run_steps.insert().values(status=StepStatus.DISPATCHED, attempts=1, **values)
        )

    def update_step(
        self, task_id: str, step_id: str, *, only_if: set[StepStatus] | None = None, **values: Any
    ) -> bool:
        """Update a step; with ``only_if``, only from those states. True if a row changed."""
        query = run_steps.update().where(
            run_steps.c.task_id == task_id, run_steps.c.step_id == step_id
        )
        if only_if:
            query = query.where(run_steps.c.status.in_([s.value for s in only_if]))
        return self.conn.execute(query.values(**values)).rowcount == 1

    def cancel_open_steps(self, task_id: str, at: datetime) -> None:
        self.conn.execute(
            run_steps.update()
            .where(
                run_steps.c.task_id == task_id,
                run_steps.c.status.in_([StepStatus.DISPATCHED, StepStatus.FAILED]),
            )
            .values(status=StepStatus.CANCELLED, finished_at=at, deadline_at=None)
        )

    def record(self, task_id: str, at: datetime, event: str, **values: Any) -> None:
        """Append one transition to the task's history."""
        self.conn.execute(history.insert().values(task_id=task_id, at=at, event=event, **values))

    def overdue_steps(self, now: datetime, limit: int = 500) -> list[sa.Row[Any]]:
        return list(
            self.conn.execute(
                sa.select(run_steps)
                .where(
                    run_steps.c.status == StepStatus.DISPATCHED,
                    run_steps.c.deadline_at.is_not(None),
                    run_steps.c.deadline_at < now,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )

    def overdue_runs(self, now: datetime, limit: int = 500) -> list[sa.Row[Any]]:
        return list(
            self.conn.execute(
                sa.select(runs)
                .where(
                    runs.c.status == RunStatus.RUNNING,
                    runs.c.deadline.is_not(None),
                    runs.c.deadline < now,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )

"""Reads and writes of the run state over one SQLAlchemy connection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_router.state import RunStatus, StepStatus, run_steps, runs


class RunRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get_run(self, task_id: str) -> sa.Row[Any] | None:
        return self.conn.execute(sa.select(runs).where(runs.c.task_id == task_id)).first()

    def steps(self, task_id: str) -> list[sa.Row[Any]]:
        return list(self.conn.execute(sa.select(run_steps).where(run_steps.c.task_id == task_id)))

    def add_run(self, **values: Any) -> None:
        self.conn.execute(runs.insert().values(status=RunStatus.RUNNING, **values))

    def finish_run(self, task_id: str, status: RunStatus, at: datetime, **values: Any) -> None:
        self.conn.execute(
            runs.update()
            .where(runs.c.task_id == task_id)
            .values(status=status, finished_at=at, **values)
        )

    def add_step(self, **values: Any) -> None:
        self.conn.execute(
            run_steps.insert().values(status=StepStatus.DISPATCHED, attempts=1, **values)
        )

    def finish_step(self, task_id: str, step_id: str, status: StepStatus, **values: Any) -> bool:
        """Move a dispatched step to a final state; False if it was not dispatched."""
        result = self.conn.execute(
            run_steps.update()
            .where(
                run_steps.c.task_id == task_id,
                run_steps.c.step_id == step_id,
                run_steps.c.status == StepStatus.DISPATCHED,
            )
            .values(status=status, **values)
        )
        return result.rowcount == 1

"""Reads and writes of the run state over one SQLAlchemy connection: the edge
where rows become typed records (``Run``, ``Step``) and records become rows.

Rows are locked ``FOR UPDATE`` where two router replicas could race (on
PostgreSQL; SQLite has one writer and ignores the clause)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_contracts import HistoryKind
from podium_router.records import Run, Step
from podium_router.state import OPEN_STEP, RunStatus, StepStatus, history, run_steps, runs
from podium_shared.secrets import redact

# The hot statements are built once and executed with parameters: SQLAlchemy then
# reuses their compiled form instead of building and keying new ones per message
# (building them was most of the router's CPU). Update parameters prefixed with
# ``_`` pick the row; the others are the columns to set.
_RUN = sa.select(runs).where(runs.c.task_id == sa.bindparam("task_id"))
_RUN_LOCKED = _RUN.with_for_update()
_STEPS = (
    sa.select(run_steps)
    .where(run_steps.c.task_id == sa.bindparam("task_id"))
    .order_by(run_steps.c.dispatched_at, run_steps.c.step_id)
)
_UPDATE_RUN = runs.update().where(runs.c.task_id == sa.bindparam("_task_id"))
_UPDATE_STEP = run_steps.update().where(
    run_steps.c.task_id == sa.bindparam("_task_id"),
    run_steps.c.step_id == sa.bindparam("_step_id"),
)
_UPDATE_STEP_IF = _UPDATE_STEP.where(
    run_steps.c.status.in_(sa.bindparam("_only_if", expanding=True))
)
_ADD_RUN = runs.insert()
_ADD_STEP = run_steps.insert()
_RECORD = history.insert()
_RUN_FIELDS = tuple(f.name for f in fields(Run))


class RunRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get_run(self, task_id: str, *, lock: bool = True) -> Run | None:
        query = _RUN_LOCKED if lock else _RUN
        row = self.conn.execute(query, {"task_id": task_id}).first()
        return None if row is None else Run.from_row(row)

    def steps(self, task_id: str) -> list[Step]:
        """The run's steps in the order they were dispatched."""
        return [Step.from_row(r) for r in self.conn.execute(_STEPS, {"task_id": task_id})]

    def add_run(self, run: Run) -> None:
        self.conn.execute(_ADD_RUN, {name: getattr(run, name) for name in _RUN_FIELDS})

    def update_run(self, task_id: str, **values: Any) -> None:
        self.conn.execute(_UPDATE_RUN, {"_task_id": task_id, **values})

    def finish_run(self, task_id: str, status: RunStatus, at: datetime, **values: Any) -> None:
        self.update_run(task_id, status=status, finished_at=at, **values)

    def add_step(self, **values: Any) -> None:
        self.conn.execute(_ADD_STEP, {"status": StepStatus.DISPATCHED, "attempts": 1, **values})

    def update_step(
        self, task_id: str, step_id: str, *, only_if: set[StepStatus] | None = None, **values: Any
    ) -> bool:
        """Update a step; with ``only_if``, only from those states. True if a row changed."""
        row = {"_task_id": task_id, "_step_id": step_id, **values}
        if only_if:
            row["_only_if"] = sorted(s.value for s in only_if)
            return self.conn.execute(_UPDATE_STEP_IF, row).rowcount == 1
        return self.conn.execute(_UPDATE_STEP, row).rowcount == 1

    def close_step(
        self, task_id: str, step_id: str, status: StepStatus, at: datetime, **values: Any
    ) -> bool:
        """Settle a step that is still open; False if it was settled already."""
        return self.update_step(
            task_id,
            step_id,
            only_if=OPEN_STEP,
            status=status,
            finished_at=at,
            deadline_at=None,
            **values,
        )

    def cancel_open_steps(self, task_id: str, at: datetime) -> None:
        self.conn.execute(
            run_steps.update()
            .where(
                run_steps.c.task_id == task_id,
                run_steps.c.status.in_(sorted(OPEN_STEP)),
            )
            .values(status=StepStatus.CANCELLED, finished_at=at, deadline_at=None)
        )

    def record(
        self, task_id: str, at: datetime, event: HistoryKind, **values: Any
    ) -> dict[str, Any]:
        """Append one transition to the task's history (its cause with secrets masked);
        returns the columns written, beside ``task_id``, ``at`` and ``event``."""
        if isinstance(cause := values.get("cause"), str):
            values["cause"] = redact(cause)
        self.conn.execute(_RECORD, {"task_id": task_id, "at": at, "event": event, **values})
        return values

    def overdue_steps(self, now: datetime, limit: int = 500) -> list[Step]:
        return [
            Step.from_row(r)
            for r in self.conn.execute(
                sa.select(run_steps)
                .where(
                    run_steps.c.status == StepStatus.DISPATCHED,
                    run_steps.c.deadline_at.is_not(None),
                    run_steps.c.deadline_at < now,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ]

    def overdue_runs(self, now: datetime, limit: int = 500) -> list[Run]:
        return [
            Run.from_row(r)
            for r in self.conn.execute(
                sa.select(runs)
                .where(
                    runs.c.status == RunStatus.RUNNING,
                    runs.c.deadline.is_not(None),
                    runs.c.deadline < now,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ]

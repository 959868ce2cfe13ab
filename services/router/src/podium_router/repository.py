"""Reads and writes of the run state over one SQLAlchemy connection: the edge
where rows become typed records (``Run``, ``Step``) and records become rows.

Rows are locked ``FOR UPDATE`` where two router replicas could race (on
PostgreSQL; SQLite has one writer and ignores the clause).

``RunRepository`` writes as it is told; ``BatchRepository`` serves a fetched
batch of messages in a handful of statements whatever its size: one query reads
every run of the batch with its steps, and the writes wait for ``flush``, which
runs each kind (new runs, new steps, step and run changes, history) as one
executemany. A run it holds a write for is read again from the database, after
a flush, so each message still decides on what the ones before it wrote."""

from __future__ import annotations

from collections.abc import Collection, Iterable
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
# A run with its steps, or the runs of a batch with theirs, in one query: a run row
# for each of its steps (or one with the step's columns empty when it has none).
_RUN_COLUMNS = tuple(c.name for c in runs.c)
_STEP_COLUMNS = tuple(c.name for c in run_steps.c)
_RUN_KEY, _STEP_KEY = _RUN_COLUMNS.index("task_id"), _STEP_COLUMNS.index("task_id")
_WITH_STEPS = (
    sa.select(*runs.c, *run_steps.c)
    .set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL)
    .select_from(runs.outerjoin(run_steps, run_steps.c.task_id == runs.c.task_id))
    .where(runs.c.task_id.in_(sa.bindparam("task_ids", expanding=True)))
    .order_by(runs.c.task_id, run_steps.c.dispatched_at, run_steps.c.step_id)
    .with_for_update(of=runs)
)
# Every history column a transition may name, with what an entry that does not name
# it stores: a batch's entries then share one column set, hence one executemany.
_HISTORY_DEFAULTS: dict[str, Any] = {
    c.name: getattr(c.default, "arg", None)
    if c.default is not None and c.default.is_scalar
    else None
    for c in history.c
    if c.name not in ("id", "task_id", "at", "event")
}


class RunRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def runs_with_steps(self, task_ids: Collection[str]) -> dict[str, tuple[Run, list[Step]]]:
        """These runs (locked), each with its steps in the order they were dispatched,
        in one query; a task without a run is not in the answer."""
        found: dict[str, tuple[Run, list[Step]]] = {}
        if not task_ids:
            return found
        width = len(_RUN_COLUMNS)
        for row in self.conn.execute(_WITH_STEPS, {"task_ids": sorted(task_ids)}):
            task_id = row[_RUN_KEY]
            if task_id not in found:
                found[task_id] = (
                    Run.from_columns(dict(zip(_RUN_COLUMNS, row[:width], strict=True))),
                    [],
                )
            if row[width + _STEP_KEY] is not None:  # None: a run without steps
                step = Step.from_columns(dict(zip(_STEP_COLUMNS, row[width:], strict=True)))
                found[task_id][1].append(step)
        return found

    def run_with_steps(self, task_id: str) -> tuple[Run | None, list[Step]]:
        """The run (locked) and its steps in the order they were dispatched, in one query."""
        return self.runs_with_steps([task_id]).get(task_id) or (None, [])

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

    def flush(self) -> None:
        """Nothing to write: this repository writes as it is told."""

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


class BatchRepository(RunRepository):
    """The repository of one fetched batch (see the module's docstring): ``flush`` once
    the batch's messages are applied, in the same transaction."""

    def __init__(self, conn: Connection, task_ids: Collection[str]) -> None:
        super().__init__(conn)
        # Runs as read and not written since (None: no run); a run written to leaves.
        self._read: dict[str, tuple[Run, list[Step]] | None] = dict.fromkeys(task_ids)
        self._read.update(self.runs_with_steps(task_ids))
        self._new_runs: list[dict[str, Any]] = []
        self._new_steps: list[dict[str, Any]] = []
        self._run_changes: dict[str, dict[str, Any]] = {}
        self._step_changes: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[dict[str, Any]] = []

    def run_with_steps(self, task_id: str) -> tuple[Run | None, list[Step]]:
        if task_id in self._read:
            found = self._read[task_id]
            return (found[0], list(found[1])) if found is not None else (None, [])
        self.flush()
        return super().run_with_steps(task_id)

    def get_run(self, task_id: str, *, lock: bool = True) -> Run | None:
        self.flush()
        return super().get_run(task_id, lock=lock)

    def steps(self, task_id: str) -> list[Step]:
        self.flush()
        return super().steps(task_id)

    def add_run(self, run: Run) -> None:
        self._read.pop(run.task_id, None)
        self._new_runs.append({name: getattr(run, name) for name in _RUN_FIELDS})

    def update_run(self, task_id: str, **values: Any) -> None:
        self._read.pop(task_id, None)
        self._run_changes.setdefault(task_id, {}).update(values)

    def add_step(self, **values: Any) -> None:
        self._read.pop(values["task_id"], None)
        self._new_steps.append({"status": StepStatus.DISPATCHED, "attempts": 1, **values})

    def update_step(
        self, task_id: str, step_id: str, *, only_if: set[StepStatus] | None = None, **values: Any
    ) -> bool:
        if only_if:
            read = self._read.get(task_id)
            if read is None:  # written to in this batch (or no run): ask the database
                self.flush()
                self._read.pop(task_id, None)
                return super().update_step(task_id, step_id, only_if=only_if, **values)
            # The run is locked since it was read, and its steps unwritten: as they were read.
            step = next((s for s in read[1] if s.step_id == step_id), None)
            if step is None or step.status not in only_if:
                return False
        self._read.pop(task_id, None)
        self._step_changes.setdefault((task_id, step_id), {}).update(values)
        return True

    def cancel_open_steps(self, task_id: str, at: datetime) -> None:
        self.flush()
        self._read.pop(task_id, None)
        super().cancel_open_steps(task_id, at)

    def record(
        self, task_id: str, at: datetime, event: HistoryKind, **values: Any
    ) -> dict[str, Any]:
        if isinstance(cause := values.get("cause"), str):
            values["cause"] = redact(cause)
        row = {"task_id": task_id, "at": at, "event": event, **_HISTORY_DEFAULTS, **values}
        self._history.append(row)
        return values

    def flush(self) -> None:
        """Write what the batch's messages asked for: new rows before the changes to
        them, steps after their runs (the foreign key), the history in its order."""
        new_runs, new_steps, entries = self._new_runs, self._new_steps, self._history
        run_changes, step_changes = self._run_changes, self._step_changes
        self._new_runs, self._new_steps, self._history = [], [], []
        self._run_changes, self._step_changes = {}, {}
        self._execute(_ADD_RUN, new_runs)
        self._execute(_ADD_STEP, new_steps)
        self._execute(
            _UPDATE_STEP,
            ({"_task_id": t, "_step_id": s, **v} for (t, s), v in step_changes.items()),
        )
        self._execute(_UPDATE_RUN, ({"_task_id": t, **v} for t, v in run_changes.items()))
        self._execute(_RECORD, entries)

    def _execute(self, statement: sa.Executable, rows: Iterable[dict[str, Any]]) -> None:
        """One executemany per set of columns named (one, in the common case)."""
        alike: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            alike.setdefault(tuple(sorted(row)), []).append(row)
        for group in alike.values():
            self.conn.execute(statement, group)

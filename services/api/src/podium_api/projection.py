"""The projection: what each event tells of a run and its steps, written into
``runs`` and ``steps``.

Events of one task reach the api on four topics (tasks, task-events, step-results,
step-failures), so a run's events may arrive in any order across topics. Every
write is therefore order-free where it can be: ``created_at`` is the earliest time
any event tells; a status only moves forward (``advances``); a step's attempts are
the highest seen. Rebuilt from the topics, the projection ends where it was.

Within one topic a task's events keep their order (every topic is keyed by task
id), which is what lets a later outcome replace an earlier one: a task that failed
and, after its dead letter was replayed, completed, ends ``completed``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_api.state import counters, dead_letter_events, history, runs, steps
from podium_contracts import (
    StepAbandoned,
    StepCompleted,
    StepFailed,
    StepRetryScheduled,
    TaskAccepted,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskHistoryRecorded,
    TaskRejected,
    TaskSubmitted,
)
from podium_shared.db import insert_ignore

SUBMITTED, ACCEPTED = "submitted", "accepted"
COMPLETED, FAILED, CANCELLED, REJECTED = "completed", "failed", "cancelled", "rejected"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, REJECTED})
STATUSES = (SUBMITTED, ACCEPTED, COMPLETED, FAILED, CANCELLED, REJECTED)
_RANK = {SUBMITTED: 0, ACCEPTED: 1} | dict.fromkeys(TERMINAL, 2)

STEP_STATUSES = ("completed", "failed", "retrying", "abandoned")
# Two events of one attempt come on two topics in either order (StepFailed to recovery,
# StepAbandoned from it): the one that says more of the outcome wins.
_STEP_RANK = {"failed": 0, "retrying": 1, "abandoned": 2, "completed": 2}


def advances(current: str | None, new: str) -> bool:
    """Whether a run in ``current`` moves to ``new``: forward only, except that one
    outcome replaces another (events of one topic arrive in order, so the later
    outcome is the newer truth: a replayed dead letter completes a failed task)."""
    if current is None:
        return True
    if current in TERMINAL and new in TERMINAL:
        return True
    return _RANK[new] > _RANK[current]


def epoch(t: datetime) -> float:
    return t.timestamp()


# Built once and executed with parameters: every event reads and writes one run or
# step, and building a statement per event cost more than running it (a profile of
# the projection: two thirds of its time in SQLAlchemy's statement construction).
# An update writes the whole merged row, so one compiled form serves every event.
def _by_key(table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(*(c == sa.bindparam(f"k_{c.name}", type_=c.type) for c in table.primary_key))


def _update(table: sa.Table) -> sa.Update:
    rest = {c.name: sa.bindparam(c.name, type_=c.type) for c in table.c if not c.primary_key}
    return table.update().where(_by_key(table)).values(rest)


_SELECT_RUN = sa.select(runs).where(_by_key(runs))
_INSERT_RUN = runs.insert()
_UPDATE_RUN = _update(runs)
_SELECT_STEP = sa.select(steps).where(_by_key(steps))
_INSERT_STEP = steps.insert()
_UPDATE_STEP = _update(steps)
_RUN_COLUMNS = tuple(c.name for c in runs.c)
_NEXT_SEQ = (
    counters.update()
    .where(counters.c.name == "runs")
    .values(value=counters.c.value + 1)
    .returning(counters.c.value)
)
_STEP_COLUMNS = tuple(c.name for c in steps.c)


def _keys(table: sa.Table, row: Mapping[str, Any]) -> dict[str, Any]:
    return {f"k_{c.name}": row[c.name] for c in table.primary_key}


def _write(conn: Connection, table: sa.Table, merged: dict[str, Any], insert: bool) -> None:
    if insert:
        conn.execute(_INSERT_RUN if table is runs else _INSERT_STEP, merged)
        return
    values = {k: v for k, v in merged.items() if not table.c[k].primary_key}
    update = _UPDATE_RUN if table is runs else _UPDATE_STEP
    conn.execute(update, values | _keys(table, merged))


def next_seq(conn: Connection) -> int:
    """The next number of a run's change (see ``state.counters``)."""
    value = conn.execute(_NEXT_SEQ).scalar_one_or_none()
    if value is None:  # a database made without the migrations' first row
        insert_ignore(conn, counters, {"name": "runs", "value": 0})
        value = conn.execute(_NEXT_SEQ).scalar_one()
    return int(value)


def upsert_run(
    conn: Connection, task_id: str, at: float, status: str | None, fields: Mapping[str, Any]
) -> None:
    """Merge what one event tells of a run: ``fields`` fill what is unknown (or, with
    a status that advances, replace it); ``created_at`` keeps the earliest time.
    A write that changes the run takes the next change number; one that tells
    nothing new writes nothing (and so wakes no stream)."""
    row = conn.execute(_SELECT_RUN, {"k_task_id": task_id}).mappings().first()
    known = {k: v for k, v in fields.items() if v is not None}
    if row is None:
        merged = dict.fromkeys(_RUN_COLUMNS) | {
            "task_id": task_id,
            "status": status or SUBMITTED,
            "created_at": at,
            "updated_at": at,
            **known,
        }
        merged["seq"] = next_seq(conn)
        _write(conn, runs, merged, insert=True)
        return
    merged = dict(row)
    moves = status is not None and advances(row["status"], status)
    for k, v in known.items():
        if row[k] is None or moves:
            merged[k] = v
    if moves:
        merged["status"] = status
    merged["created_at"] = min(at, row["created_at"])
    merged["updated_at"] = max(at, row["updated_at"])
    if merged == dict(row):
        return
    merged["seq"] = next_seq(conn)
    _write(conn, runs, merged, insert=False)


def upsert_step(
    conn: Connection,
    task_id: str,
    step_id: str,
    at: float,
    *,
    status: str | None,
    attempt: int,
    duration_ms: float | None = None,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Merge what one event tells of a step: the highest attempt's status wins; an
    attempt's duration is added once (the inbox drops redeliveries)."""
    row = (
        conn.execute(_SELECT_STEP, {"k_task_id": task_id, "k_step_id": step_id}).mappings().first()
    )
    known = {k: v for k, v in (fields or {}).items() if v is not None}
    if row is None:
        merged = dict.fromkeys(_STEP_COLUMNS) | {
            "task_id": task_id,
            "step_id": step_id,
            "status": status or "retrying",
            "attempts": attempt,
            "duration_ms": duration_ms,
            "total_duration_ms": duration_ms or 0.0,
            "first_at": at,
            "updated_at": at,
            **known,
        }
        _write(conn, steps, merged, insert=True)
        return
    merged = dict(row)
    newer = attempt >= row["attempts"]
    merged.update({k: v for k, v in known.items() if row[k] is None or newer})
    if status is not None and (
        attempt > row["attempts"]
        or (attempt == row["attempts"] and _STEP_RANK[status] >= _STEP_RANK[row["status"]])
    ):
        merged["status"] = status
    if duration_ms is not None:
        merged["total_duration_ms"] = row["total_duration_ms"] + duration_ms
        if newer:
            merged["duration_ms"] = duration_ms
    merged["attempts"] = max(attempt, row["attempts"])
    merged["first_at"] = min(at, row["first_at"])
    merged["updated_at"] = max(at, row["updated_at"])
    _write(conn, steps, merged, insert=False)


def _dump(model: Any) -> Any:
    return None if model is None else model.model_dump(mode="json")


def task_submitted(conn: Connection, e: TaskSubmitted, at: float) -> None:
    upsert_run(
        conn,
        e.task_id,
        at,
        SUBMITTED,
        {
            "tenant": e.tenant,
            "workflow": e.workflow,
            "workflow_version": e.workflow_version,
            "subject": e.subject,
            "input": e.input,
        },
    )


def task_cancel_requested(conn: Connection, e: TaskCancelRequested, at: float) -> None:
    upsert_run(conn, e.task_id, at, None, {"cancel_requested_at": at})


def task_accepted(conn: Connection, e: TaskAccepted, at: float) -> None:
    accepted = epoch(e.accepted_at)
    upsert_run(
        conn,
        e.task_id,
        min(at, accepted),
        ACCEPTED,
        {
            "workflow": e.workflow,
            "workflow_version": e.workflow_version,
            "accepted_at": accepted,
            # An accepted task from a router before plans were published has none.
            "plan": [s.model_dump(mode="json") for s in e.steps] or None,
        },
    )


def task_completed(conn: Connection, e: TaskCompleted, at: float) -> None:
    done = epoch(e.completed_at)
    upsert_run(
        conn,
        e.task_id,
        min(at, epoch(e.accepted_at)),
        COMPLETED,
        {
            "workflow": e.workflow,
            "tenant": e.tenant,
            "subject": e.subject,
            "accepted_at": epoch(e.accepted_at),
            "finished_at": done,
            "output": {"value": e.output},  # wrapped: a JSON null output is not "unknown"
            "usage": _dump(e.usage),
        },
    )
    for s in e.steps:
        upsert_step(
            conn,
            e.task_id,
            s.step_id,
            done,
            status="completed",
            attempt=s.attempts,
            fields={"capability": s.capability, "pool": s.pool},
        )


def task_failed(conn: Connection, e: TaskFailed, at: float) -> None:
    upsert_run(
        conn,
        e.task_id,
        at,
        FAILED,
        {
            "workflow": e.workflow,
            "tenant": e.tenant,
            "subject": e.subject,
            "finished_at": epoch(e.failed_at),
            "error": _dump(e.error),
            "dlq": _dump(e.dlq),
            "usage": _dump(e.usage),
        },
    )


def task_cancelled(conn: Connection, e: TaskCancelled, at: float) -> None:
    upsert_run(
        conn,
        e.task_id,
        at,
        CANCELLED,
        {
            "workflow": e.workflow,
            "finished_at": epoch(e.cancelled_at),
            "error": {"type": "cancelled", "message": e.reason},
        },
    )


def task_rejected(conn: Connection, e: TaskRejected, at: float) -> None:
    upsert_run(
        conn,
        e.task_id,
        at,
        REJECTED,
        {
            "workflow": e.workflow,
            "finished_at": epoch(e.rejected_at),
            "error": _dump(e.error),
            "dlq": _dump(e.dlq),
        },
    )


def step_completed(conn: Connection, e: StepCompleted, at: float) -> None:
    upsert_step(
        conn,
        e.task_id,
        e.step_id,
        at,
        status="completed",
        attempt=e.attempt,
        duration_ms=e.duration_ms,
        fields={
            "capability": e.capability,
            "pool": e.pool,
            "output": {"value": e.output},
            "usage": _dump(e.usage),
        },
    )


def step_failed(conn: Connection, e: StepFailed, at: float) -> None:
    upsert_step(
        conn,
        e.task_id,
        e.step_id,
        at,
        status="failed",
        attempt=e.attempt,
        duration_ms=e.duration_ms,
        fields={"capability": e.capability, "pool": e.pool, "error": _dump(e.error)},
    )


def step_retry_scheduled(conn: Connection, e: StepRetryScheduled, at: float) -> None:
    # The attempt that will run: it has no duration yet, and it is the newest.
    upsert_step(
        conn,
        e.task_id,
        e.step_id,
        at,
        status="retrying",
        attempt=e.attempt,
        fields={"pool": e.pool, "retry_due_at": epoch(e.due_at), "error": _dump(e.error)},
    )


def step_abandoned(conn: Connection, e: StepAbandoned, at: float) -> None:
    upsert_step(
        conn,
        e.task_id,
        e.step_id,
        at,
        status="abandoned",
        attempt=e.attempts,
        fields={"error": _dump(e.error), "dlq": _dump(e.dlq)},
    )
    if e.dlq is not None:
        dead_lettered(conn, e, e.dlq.topic, e.dlq.record_id, at)


def dead_lettered(
    conn: Connection, e: StepAbandoned, topic: str, record_id: str, at: float
) -> None:
    """A new dead letter for the live streams (once per record: a rebuilt projection
    or a redelivered event adds none). Why from StepAbandoned and not by consuming
    the DLQ topics: the projection reads step-failures already, so this costs one
    insert per dead letter in the transaction that projects it, with no extra
    consumer, group or ACL, and no re-reading of DLQs whose size grows with time
    (polling the summaries would read every DLQ from its start on every poll).
    What it does not see: records dead-lettered as poison by a consumer (they
    announce no event); those show in ``/v1/dead-letters`` only."""
    known = conn.execute(
        sa.select(dead_letter_events.c.seq).where(dead_letter_events.c.record_id == record_id)
    ).first()
    if known is not None:
        return
    row = {
        "record_id": record_id,
        "seq": next_seq(conn),
        "topic": topic,
        "task_id": e.task_id,
        "step_id": e.step_id,
        "error": _dump(e.error),
        "at": at,
    }
    conn.execute(dead_letter_events.insert(), row)


_LAST_ENTRY = sa.select(sa.func.max(history.c.seq)).where(
    history.c.task_id == sa.bindparam("task_id")
)
_ADD_ENTRY = history.insert()
_DETAIL_FIELDS = ("attempt", "pool", "capability", "model", "workflow_version")


def history_entry(e: TaskHistoryRecorded, seq: int) -> dict[str, Any]:
    """The row of one history entry: its number in the task's history, and the fields
    it has beyond what, why and what next in ``detail`` (those it tells)."""
    detail = {k: getattr(e, k) for k in _DETAIL_FIELDS if getattr(e, k) is not None}
    return {
        "task_id": e.task_id,
        "seq": seq,
        "at": epoch(e.at),
        "kind": e.kind,
        "step_id": e.step_id,
        "cause": e.cause,
        "next_action": e.next,
        "detail": detail,
    }


def task_history_recorded(conn: Connection, e: TaskHistoryRecorded, _at: float) -> None:
    """Append the entry after the task's last: one topic, keyed by task, holds a task's
    entries in the order the router wrote them, and the inbox drops redeliveries, so
    the numbers are the same after a rebuild."""
    last = conn.execute(_LAST_ENTRY, {"task_id": e.task_id}).scalar_one_or_none()
    conn.execute(_ADD_ENTRY, history_entry(e, (last or 0) + 1))

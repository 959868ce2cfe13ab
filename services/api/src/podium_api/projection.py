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

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Concatenate, ParamSpec

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
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
# A write is the whole merged row (``upsert``), so one compiled form serves every event.
def _by_key(table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(*(c == sa.bindparam(f"k_{c.name}", type_=c.type) for c in table.primary_key))


_SELECT_RUN = sa.select(runs).where(_by_key(runs))
_SELECT_STEP = sa.select(steps).where(_by_key(steps))
_RUN_COLUMNS = tuple(c.name for c in runs.c)
_NEXT_SEQ = (
    counters.update()
    .where(counters.c.name == "runs")
    .values(value=counters.c.value + sa.bindparam("count", type_=sa.BigInteger))
    .returning(counters.c.value)
)
_STEP_COLUMNS = tuple(c.name for c in steps.c)
# Taken before a batch reads a row (a plain SELECT on SQLite, whose writers queue for
# the database's lock anyway; FOR UPDATE on PostgreSQL): see ``Batch``.
_HOLD_CHANGES = sa.select(counters.c.value).where(counters.c.name == "runs").with_for_update()


@functools.cache
def upsert(dialect: str, table: sa.Table) -> Any:
    """An insert of whole rows that, where a row's key exists, writes the row over it
    (``INSERT .. ON CONFLICT (key) DO UPDATE``): a batch's new and changed rows of one
    table in one statement."""
    keys, columns = list(table.primary_key), [c.name for c in table.c if not c.primary_key]
    if dialect == "sqlite":
        lite = sqlite.insert(table)
        return lite.on_conflict_do_update(
            index_elements=keys, set_={c: lite.excluded[c] for c in columns}
        )
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=keys, set_={c: pg.excluded[c] for c in columns}
        )
    raise NotImplementedError(f"podium stores state in SQLite or PostgreSQL, not {dialect}")


def next_seq(conn: Connection, count: int = 1) -> int:
    """The last of the next ``count`` numbers of runs' changes (see ``state.counters``)."""
    value = conn.execute(_NEXT_SEQ, {"count": count}).scalar_one_or_none()
    if value is None:  # a database made without the migrations' first row
        insert_ignore(conn, counters, {"name": "runs", "value": 0})
        value = conn.execute(_NEXT_SEQ, {"count": count}).scalar_one()
    return int(value)


_StepKey = tuple[str, str]


class Batch:
    """The rows a batch of events reads and writes, read in one statement per table and
    written in one per table and kind (insert, update) at ``write``.

    Why: on PostgreSQL every statement is a round trip, and the projection made about
    three per event (read the row, take a change number, write the row); a batch of 200
    events now makes about ten. Each event still merges into the row as the one before
    it left it (here, in memory), in the order the batch holds them, so what is written
    is what applying them one by one wrote. Change numbers are taken at ``write``, all
    at once and in the order the changes were made, inside the transaction: its row lock
    on ``counters`` still orders them as the commits.

    That lock is taken before the batch reads any row: api replicas sharing one
    PostgreSQL database would otherwise each read a run, merge into what they read and
    write, and the second commit would undo what the first wrote. Holding it, the
    second replica reads after the first committed, so one projects after the other
    (as before, where each waited at its first change number)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.runs: dict[str, dict[str, Any] | None] = {}
        self.steps: dict[_StepKey, dict[str, Any] | None] = {}
        self._runs_read: dict[str, dict[str, Any] | None] = {}
        self._steps_read: dict[_StepKey, dict[str, Any] | None] = {}
        self._last_entry: dict[str, int] = {}
        self._entries: list[dict[str, Any]] = []
        self._dead_known: set[str] = set()
        self._dead_asked: set[str] = set()
        self._dead: list[dict[str, Any]] = []
        self._steps_of: set[str] = set()  # tasks whose every step was read
        self._changes = 0
        self._holding = False

    def _hold(self) -> None:
        if not self._holding:
            self.conn.execute(_HOLD_CHANGES)
            self._holding = True

    def load(self, task_ids: Iterable[str], record_ids: Iterable[str] = ()) -> None:
        """Read at once the runs, steps, last history entries and dead letters of these
        tasks and records (what ``run``, ``step``, ... would each have read alone)."""
        self._hold()
        wanted = sorted(set(task_ids) - self.runs.keys())
        if wanted:
            found = self.conn.execute(sa.select(runs).where(runs.c.task_id.in_(wanted)))
            rows = {r["task_id"]: dict(r) for r in found.mappings()}
            for task_id in wanted:
                self._remember_run(task_id, rows.get(task_id))
            got = self.conn.execute(sa.select(steps).where(steps.c.task_id.in_(wanted)))
            for r in got.mappings():
                self._remember_step((r["task_id"], r["step_id"]), dict(r))
            self._steps_of |= set(wanted)
            last = self.conn.execute(
                sa.select(history.c.task_id, sa.func.max(history.c.seq))
                .where(history.c.task_id.in_(wanted))
                .group_by(history.c.task_id)
            )
            self._last_entry |= dict.fromkeys(wanted, 0) | {t: int(n) for t, n in last}
        asked = sorted(set(record_ids) - self._dead_asked)
        if asked:
            known = self.conn.execute(
                sa.select(dead_letter_events.c.record_id).where(
                    dead_letter_events.c.record_id.in_(asked)
                )
            )
            self._dead_known |= set(known.scalars())
            self._dead_asked |= set(asked)

    def _remember_run(self, task_id: str, row: dict[str, Any] | None) -> None:
        self.runs[task_id] = row
        self._runs_read[task_id] = None if row is None else dict(row)

    def _remember_step(self, key: _StepKey, row: dict[str, Any] | None) -> None:
        self.steps[key] = row
        self._steps_read[key] = None if row is None else dict(row)

    def run(self, task_id: str) -> dict[str, Any] | None:
        """The run as the events so far left it (None: not known)."""
        if task_id not in self.runs:
            self._hold()
            row = self.conn.execute(_SELECT_RUN, {"k_task_id": task_id}).mappings().first()
            self._remember_run(task_id, None if row is None else dict(row))
        return self.runs[task_id]

    def step(self, task_id: str, step_id: str) -> dict[str, Any] | None:
        key = (task_id, step_id)
        if key not in self.steps:
            if task_id in self._steps_of:
                self._remember_step(key, None)  # its task's steps were all read
            else:
                self._hold()
                keys = {"k_task_id": task_id, "k_step_id": step_id}
                row = self.conn.execute(_SELECT_STEP, keys).mappings().first()
                self._remember_step(key, None if row is None else dict(row))
        return self.steps[key]

    def change(self) -> int:
        """A stand-in for the next change number, made real by ``write`` (negative: no
        real one is)."""
        self._changes += 1
        return -self._changes

    def last_entry(self, task_id: str) -> int:
        if task_id not in self._last_entry:
            self._hold()
            last = self.conn.execute(_LAST_ENTRY, {"task_id": task_id}).scalar_one_or_none()
            self._last_entry[task_id] = last or 0
        return self._last_entry[task_id]

    def add_entry(self, row: dict[str, Any]) -> None:
        self._last_entry[row["task_id"]] = row["seq"]
        self._entries.append(row)

    def dead_letter_known(self, record_id: str) -> bool:
        if record_id not in self._dead_asked:
            self.load((), [record_id])
        return record_id in self._dead_known

    def add_dead_letter(self, row: dict[str, Any]) -> None:
        self._dead_known.add(row["record_id"])
        self._dead.append(row)

    def write(self) -> None:
        """Write what the events changed: one statement per table and kind."""
        base = 0
        if self._changes:
            base = next_seq(self.conn, self._changes) - self._changes

        def real(row: dict[str, Any]) -> dict[str, Any]:
            seq = row.get("seq")
            if seq is not None and seq < 0:
                return row | {"seq": base - seq}  # stand-in -k is the k-th change
            return row

        self._save(runs, [(r, self._runs_read[k]) for k, r in self.runs.items()], real)
        self._save(steps, [(r, self._steps_read[k]) for k, r in self.steps.items()], real)
        if self._entries:
            self.conn.execute(_ADD_ENTRY, self._entries)
        if self._dead:
            self.conn.execute(dead_letter_events.insert(), [real(r) for r in self._dead])

    def _save(
        self,
        table: sa.Table,
        rows: list[tuple[dict[str, Any] | None, dict[str, Any] | None]],
        real: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Write the rows that were not there or changed, in one statement (an upsert:
        on PostgreSQL an insert and an update were two round trips per batch)."""
        written = [real(now) for now, read in rows if now is not None and now != read]
        if written:
            self.conn.execute(upsert(self.conn.dialect.name, table), written)


P = ParamSpec("P")


def batched(
    project: Callable[Concatenate[Batch, P], None],
) -> Callable[Concatenate[Connection | Batch, P], None]:
    """A projection function that takes a batch, or a connection: then it reads and
    writes its rows itself, as a batch of one event."""

    @functools.wraps(project)
    def run(target: Connection | Batch, /, *args: P.args, **kwargs: P.kwargs) -> None:
        if isinstance(target, Batch):
            project(target, *args, **kwargs)
            return
        batch = Batch(target)
        project(batch, *args, **kwargs)
        batch.write()

    return run


@batched
def upsert_run(
    b: Batch, task_id: str, at: float, status: str | None, fields: Mapping[str, Any]
) -> None:
    """Merge what one event tells of a run: ``fields`` fill what is unknown (or, with
    a status that advances, replace it); ``created_at`` keeps the earliest time.
    A write that changes the run takes the next change number; one that tells
    nothing new writes nothing (and so wakes no stream)."""
    row = b.run(task_id)
    known = {k: v for k, v in fields.items() if v is not None}
    if row is None:
        merged = dict.fromkeys(_RUN_COLUMNS) | {
            "task_id": task_id,
            "status": status or SUBMITTED,
            "created_at": at,
            "updated_at": at,
            **known,
        }
        merged["seq"] = b.change()
        b.runs[task_id] = merged
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
    if merged == row:
        return
    merged["seq"] = b.change()
    b.runs[task_id] = merged


@batched
def upsert_step(
    b: Batch,
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
    row = b.step(task_id, step_id)
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
        b.steps[task_id, step_id] = merged
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
    b.steps[task_id, step_id] = merged


def _dump(model: Any) -> Any:
    return None if model is None else model.model_dump(mode="json")


@batched
def task_submitted(b: Batch, e: TaskSubmitted, at: float) -> None:
    upsert_run(
        b,
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


@batched
def task_cancel_requested(b: Batch, e: TaskCancelRequested, at: float) -> None:
    upsert_run(b, e.task_id, at, None, {"cancel_requested_at": at})


@batched
def task_accepted(b: Batch, e: TaskAccepted, at: float) -> None:
    accepted = epoch(e.accepted_at)
    upsert_run(
        b,
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


@batched
def task_completed(b: Batch, e: TaskCompleted, at: float) -> None:
    done = epoch(e.completed_at)
    upsert_run(
        b,
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
            b,
            e.task_id,
            s.step_id,
            done,
            status="completed",
            attempt=s.attempts,
            fields={"capability": s.capability, "pool": s.pool},
        )


@batched
def task_failed(b: Batch, e: TaskFailed, at: float) -> None:
    upsert_run(
        b,
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


@batched
def task_cancelled(b: Batch, e: TaskCancelled, at: float) -> None:
    upsert_run(
        b,
        e.task_id,
        at,
        CANCELLED,
        {
            "workflow": e.workflow,
            "finished_at": epoch(e.cancelled_at),
            "error": {"type": "cancelled", "message": e.reason},
        },
    )


@batched
def task_rejected(b: Batch, e: TaskRejected, at: float) -> None:
    upsert_run(
        b,
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


@batched
def step_completed(b: Batch, e: StepCompleted, at: float) -> None:
    upsert_step(
        b,
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


@batched
def step_failed(b: Batch, e: StepFailed, at: float) -> None:
    upsert_step(
        b,
        e.task_id,
        e.step_id,
        at,
        status="failed",
        attempt=e.attempt,
        duration_ms=e.duration_ms,
        fields={"capability": e.capability, "pool": e.pool, "error": _dump(e.error)},
    )


@batched
def step_retry_scheduled(b: Batch, e: StepRetryScheduled, at: float) -> None:
    # The attempt that will run: it has no duration yet, and it is the newest.
    upsert_step(
        b,
        e.task_id,
        e.step_id,
        at,
        status="retrying",
        attempt=e.attempt,
        fields={"pool": e.pool, "retry_due_at": epoch(e.due_at), "error": _dump(e.error)},
    )


@batched
def step_abandoned(b: Batch, e: StepAbandoned, at: float) -> None:
    upsert_step(
        b,
        e.task_id,
        e.step_id,
        at,
        status="abandoned",
        attempt=e.attempts,
        fields={"error": _dump(e.error), "dlq": _dump(e.dlq)},
    )
    if e.dlq is not None:
        dead_lettered(b, e, e.dlq.topic, e.dlq.record_id, at)


@batched
def dead_lettered(b: Batch, e: StepAbandoned, topic: str, record_id: str, at: float) -> None:
    """A new dead letter for the live streams (once per record: a rebuilt projection
    or a redelivered event adds none). Why from StepAbandoned and not by consuming
    the DLQ topics: the projection reads step-failures already, so this costs one
    insert per dead letter in the transaction that projects it, with no extra
    consumer, group or ACL, and no re-reading of DLQs whose size grows with time
    (polling the summaries would read every DLQ from its start on every poll).
    What it does not see: records dead-lettered as poison by a consumer (they
    announce no event); those show in ``/v1/dead-letters`` only."""
    if b.dead_letter_known(record_id):
        return
    row = {
        "record_id": record_id,
        "seq": b.change(),
        "topic": topic,
        "task_id": e.task_id,
        "step_id": e.step_id,
        "error": _dump(e.error),
        "at": at,
    }
    b.add_dead_letter(row)


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


@batched
def task_history_recorded(b: Batch, e: TaskHistoryRecorded, _at: float) -> None:
    """Append the entry after the task's last: one topic, keyed by task, holds a task's
    entries in the order the router wrote them, and the inbox drops redeliveries, so
    the numbers are the same after a rebuild."""
    b.add_entry(history_entry(e, b.last_entry(e.task_id) + 1))

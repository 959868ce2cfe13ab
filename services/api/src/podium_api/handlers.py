"""The api's edge, a table: each contract type it reads → one projection function.

Unlike the other services' use cases these take the event's time as well: a
submission carries no time of its own, and a run's ``created_at`` is the earliest
time any of its events tells."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Connection

from podium_api import projection as p
from podium_contracts import (
    Contract,
    Event,
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
from podium_shared import Handler, UnitOfWork

Project = Callable[[Connection | p.Batch, Any, float], None]

PROJECTIONS: Mapping[type[Contract], Project] = {
    TaskSubmitted: p.task_submitted,
    TaskCancelRequested: p.task_cancel_requested,
    TaskAccepted: p.task_accepted,
    TaskCompleted: p.task_completed,
    TaskFailed: p.task_failed,
    TaskCancelled: p.task_cancelled,
    TaskRejected: p.task_rejected,
    StepCompleted: p.step_completed,
    StepFailed: p.step_failed,
    StepRetryScheduled: p.step_retry_scheduled,
    StepAbandoned: p.step_abandoned,
    TaskHistoryRecorded: p.task_history_recorded,
}


def _project(target: Connection | p.Batch, event: Event) -> None:
    payload = event.payload
    for cls in type(payload).__mro__:
        project = PROJECTIONS.get(cls)
        if project is not None:
            project(target, payload, event.envelope.time.timestamp())
            return
    raise TypeError(f"api does not project {type(payload).__name__}")


def apply(event: Event, _result: Any, uow: UnitOfWork) -> None:
    """Project one event; a contract of a later version reaches its base's function."""
    _project(uow.conn, event)


def apply_all(conn: Connection, events: list[Event]) -> None:
    """Project a batch of events in order, its rows read at once and written at once."""
    batch = p.Batch(conn)
    batch.load(
        (str(getattr(e.payload, "task_id", "")) for e in events),
        (
            e.payload.dlq.record_id
            for e in events
            if isinstance(e.payload, StepAbandoned) and e.payload.dlq is not None
        ),
    )
    for event in events:
        _project(batch, event)
    batch.write()


def make_handler(changed: Callable[[], None] = lambda: None) -> Handler[None]:
    """``changed`` is told of every event projected (the live streams' wake-up: it
    must only schedule the wake-up, which then runs after the commit)."""

    def apply_and_tell(event: Event, result: Any, uow: UnitOfWork) -> None:
        apply(event, result, uow)
        if not isinstance(event.payload, TaskHistoryRecorded):  # changes no run: no wake-up
            changed()

    def apply_all_and_tell(conn: Connection, events: list[Event]) -> None:
        apply_all(conn, events)
        if any(not isinstance(e.payload, TaskHistoryRecorded) for e in events):
            changed()

    # The inbox is asked in the batch's own transaction: on PostgreSQL a transaction and a
    # query fewer per batch, and a batch's cost is mostly its round trips.
    return Handler(apply=apply_and_tell, apply_all=apply_all_and_tell, inbox_at_write=True)

"""The api's commands: submit a task and cancel one. Each runs in one transaction
that records the message in the outbox (the relay publishes it), projects what it
already knows, and records who did it in ``actions``."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_api import projection
from podium_api.state import actions, runs, submissions
from podium_api.tokens import Principal
from podium_contracts import Contract, TaskCancelRequested, TaskSubmitted, encode, new_id
from podium_shared import OutgoingMessage, Topics, UnitOfWork
from podium_shared.db import insert_ignore

SOURCE = "api"


class Submitted(enum.Enum):
    PUBLISHED = "published"  # new: TaskSubmitted is in the outbox
    EXISTS = "exists"  # this tenant's task id was submitted before: nothing sent again
    CONFLICT = "conflict"  # the task id belongs to a run this principal may not see


class Cancelled(enum.Enum):
    PUBLISHED = "published"
    NOT_FOUND = "not_found"  # absent, or another tenant's (which must look the same)
    FINISHED = "finished"  # already completed, failed, cancelled or rejected


@dataclass(frozen=True, slots=True)
class Commands:
    topics: Topics

    def _publish(self, conn: Connection, payload: Contract, key: str, at: datetime) -> None:
        # encode, not UnitOfWork.publish: the event's time must be the one projected now,
        # so a projection rebuilt from the topics dates the run the same.
        value, headers = encode(payload, source=SOURCE, id=new_id(), time=at)
        uow = UnitOfWork(conn, source=SOURCE)
        uow.publish_raw(OutgoingMessage(self.topics.tasks, key.encode(), value, headers))
        uow.flush()

    def submit(
        self, conn: Connection, who: Principal, task: TaskSubmitted, now: datetime | None = None
    ) -> Submitted:
        """Publish ``task`` once per task id; a repeat by its tenant changes nothing."""
        at = now or datetime.now(UTC)
        known = conn.execute(sa.select(runs.c.tenant).where(runs.c.task_id == task.task_id)).first()
        if known is not None:
            return Submitted.EXISTS if known.tenant == task.tenant else Submitted.CONFLICT
        row = {"task_id": task.task_id, "tenant": task.tenant, "token_id": who.token_id}
        if not insert_ignore(conn, submissions, row | {"at": at.timestamp()}):
            theirs = conn.execute(
                sa.select(submissions.c.tenant).where(submissions.c.task_id == task.task_id)
            ).scalar_one()
            return Submitted.EXISTS if theirs == task.tenant else Submitted.CONFLICT
        self._publish(conn, task, task.task_id, at)
        projection.task_submitted(conn, task, at.timestamp())
        self._record(conn, who, "submit", task.task_id, f"workflow {task.workflow}", at)
        return Submitted.PUBLISHED

    def cancel(
        self,
        conn: Connection,
        who: Principal,
        task_id: str,
        reason: str,
        now: datetime | None = None,
    ) -> Cancelled:
        """Ask the router to cancel a visible, unfinished run."""
        at = now or datetime.now(UTC)
        row = conn.execute(
            sa.select(runs.c.tenant, runs.c.status).where(runs.c.task_id == task_id)
        ).first()
        if row is None or not who.sees(row.tenant):
            return Cancelled.NOT_FOUND
        if row.status in projection.TERMINAL:
            return Cancelled.FINISHED
        # In the run's tenant: the router refuses a cancel from another tenant.
        request = TaskCancelRequested(task_id=task_id, reason=reason, tenant=row.tenant)
        self._publish(conn, request, task_id, at)
        projection.task_cancel_requested(conn, request, at.timestamp())
        self._record(conn, who, "cancel", task_id, reason, at)
        return Cancelled.PUBLISHED

    @staticmethod
    def _record(
        conn: Connection, who: Principal, action: str, task_id: str, detail: str, at: datetime
    ) -> None:
        conn.execute(
            actions.insert().values(
                token_id=who.token_id,
                action=action,
                task_id=task_id,
                detail=detail,
                at=at.timestamp(),
            )
        )

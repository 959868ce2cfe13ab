"""Recovery's use case: record a failure and act on the decision."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from podium_contracts import DlqLocation, StepAbandoned, StepFailed, encode, new_id
from podium_shared import DlqReason, Topics, UnitOfWork, dead_letter

from podium_recovery.decisions import Decision, decide
from podium_recovery.state import failures

log = structlog.get_logger(__name__)


class Recovery:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics

    def step_failed(self, failure: StepFailed, uow: UnitOfWork) -> None:
        decision = decide(failure)
        dlq_id: str | None = None
        if decision is Decision.ABANDON:
            dlq_id = self._abandon(failure, uow)
        uow.conn.execute(
            failures.insert().values(
                task_id=failure.task_id,
                step_id=failure.step_id,
                attempt=failure.attempt,
                error_type=failure.error.type,
                error_class=failure.error.error_class,
                message=failure.error.message,
                decision=decision,
                dlq_record_id=dlq_id,
                at=datetime.now(UTC),
            )
        )
        log.info(
            "step failure handled",
            task_id=failure.task_id,
            step_id=failure.step_id,
            decision=decision,
            error=failure.error.type,
        )

    def _abandon(self, failure: StepFailed, uow: UnitOfWork) -> str:
        """Dead-letter the step's request and tell the router the step is abandoned."""
        original = self.topics.steps(failure.request.pool)
        record_id = new_id()
        value, headers = encode(
            failure.request, source="recovery", id=record_id, traceparent=uow.traceparent
        )
        uow.publish_raw(
            dead_letter(
                topic=original,
                partition=-1,
                offset=-1,
                key=f"{failure.task_id}/{failure.step_id}".encode(),
                value=value,
                headers=headers,
                reason=DlqReason.STEP_ABANDONED,
                error_type=failure.error.type,
                error_message=failure.error.message,
                service="recovery",
                attempts=failure.attempt,
                extra={
                    "error-class": failure.error.error_class,
                    "task-id": failure.task_id,
                    "step-id": failure.step_id,
                },
            )
        )
        location = DlqLocation(topic=self.topics.dlq(original), record_id=record_id)
        uow.publish(
            self.topics.step_results,
            StepAbandoned(
                task_id=failure.task_id,
                step_id=failure.step_id,
                attempts=failure.attempt,
                error=failure.error,
                dlq=location,
            ),
            key=failure.task_id,
        )
        return record_id

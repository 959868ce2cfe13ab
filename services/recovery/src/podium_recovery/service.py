"""Recovery's use case: decide what a failed step gets, act on it in the
consuming transaction, and record the decision."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from podium_contracts import (
    DlqHeader,
    DlqLocation,
    StepAbandoned,
    StepFailed,
    StepRetryScheduled,
    encode,
    new_id,
)
from podium_recovery.decisions import Abandon, Decision, Retry, decide
from podium_recovery.settings import RecoverySettings
from podium_recovery.state import failures
from podium_recovery.timers import schedule
from podium_shared import DlqReason, Topics, UnitOfWork, dead_letter, metrics, telemetry

log = structlog.get_logger(__name__)

SERVICE = "recovery"


def _now() -> datetime:
    return datetime.now(UTC)


class Recovery:
    def __init__(
        self,
        topics: Topics,
        settings: RecoverySettings | None = None,
        *,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
        timer_scheduled: Callable[[], None] | None = None,
    ) -> None:
        self.topics = topics
        # Wakes the timer loop (timers.make_timer_loop), which sleeps long while idle.
        self._timer_scheduled = timer_scheduled
        self.settings = settings or RecoverySettings()
        self._defaults = self.settings.default_policy()
        self._caps = self.settings.caps()
        self._clock = clock
        self._rng = rng or random.Random()

    def step_failed(self, failure: StepFailed, uow: UnitOfWork) -> Decision | None:
        """Retry the step later or abandon it; None when this failure was already handled."""
        now = self._clock()
        if self._retry_already_scheduled(uow, failure):
            # Two reports of one attempt (the router's watchdog and a late executor
            # failure): the retry exists already; a second would run the step twice.
            self._record(uow, failure, now, decision="duplicate", detail="retry already scheduled")
            log.info("duplicate failure ignored", task_id=failure.task_id, step_id=failure.step_id)
            return None
        decision = decide(
            failure,
            self._defaults,
            now,
            self._rng,
            jitter=self.settings.jitter_mode,
            retry_after_cap_s=self.settings.retry_after_cap_s,
            caps=self._caps,
            task_retries=self._retries_of(uow, failure.task_id),
        )
        if isinstance(decision, Retry):
            self._retry(failure, decision, uow)
            self._record(
                uow,
                failure,
                now,
                decision="retry",
                detail=f"attempt {decision.attempt} on pool {decision.pool}"
                + (" (fallback)" if decision.fallback else "")
                + f" in {decision.delay_s:.3f}s",
                retry_pool=decision.pool,
                retry_model=decision.model,
                delay_s=decision.delay_s,
                due_at=decision.due_at,
            )
        else:
            record_id = self._abandon(failure, decision, uow)
            self._record(
                uow,
                failure,
                now,
                decision="abandon",
                detail=decision.detail,
                dlq_record_id=record_id,
            )
        log.info(
            "step failure handled",
            task_id=failure.task_id,
            step_id=failure.step_id,
            attempt=failure.attempt,
            decision=type(decision).__name__.lower(),
            error=failure.error.type,
        )
        return decision

    def _retry(self, failure: StepFailed, retry: Retry, uow: UnitOfWork) -> None:
        """Store the timer of the next attempt and tell the router to watch it."""
        attrs = {
            "podium.task_id": failure.task_id,
            "podium.step_id": failure.step_id,
            "podium.attempt": retry.attempt,
            "podium.retry.pool": retry.pool,
            "podium.retry.model": retry.model or "",
            "podium.retry.due_at": retry.due_at.isoformat(),
            "error.type": failure.error.type,
        }
        with telemetry.span("recovery.retry_scheduled", **attrs):
            self._schedule_retry(failure, retry, uow)
            metrics.retry_scheduled(failure.capability, failure.pool, failure.error.type)
            telemetry.retry_scheduled(
                error_type=failure.error.type,
                attempt=retry.attempt,
                delay_s=max((retry.due_at - datetime.now(UTC)).total_seconds(), 0.0),
            )

    def _schedule_retry(self, failure: StepFailed, retry: Retry, uow: UnitOfWork) -> None:
        # The timer keeps this span's context, so the retry continues the same trace.
        traceparent, _ = telemetry.outgoing_context(uow.traceparent, uow.tracestate)
        schedule(
            uow.conn,
            self.topics,
            retry.request(failure.request),
            retry.due_at,
            traceparent=traceparent,
        )
        if self._timer_scheduled is not None:
            self._timer_scheduled()
        uow.publish(
            self.topics.step_results,
            StepRetryScheduled.for_failure(
                failure,
                attempt=retry.attempt,
                pool=retry.pool,
                model=retry.model,
                due_at=retry.due_at,
            ),
            key=failure.task_id,
        )

    def _abandon(self, failure: StepFailed, abandon: Abandon, uow: UnitOfWork) -> str:
        """Dead-letter the step's request and tell the router the step is abandoned."""
        attrs = {
            "podium.task_id": failure.task_id,
            "podium.step_id": failure.step_id,
            "podium.attempts": failure.attempt,
            "error.type": failure.error.type,
            "podium.abandoned": abandon.why.value,
        }
        with telemetry.span("recovery.dead_lettered", **attrs):
            record_id = self._dead_letter_step(failure, abandon, uow)
            metrics.step_abandoned(failure.capability, failure.pool, failure.error.type)
            telemetry.step_abandoned(
                error_type=failure.error.type,
                attempts=failure.attempt,
            )
        return record_id

    def _dead_letter_step(self, failure: StepFailed, abandon: Abandon, uow: UnitOfWork) -> str:
        request = failure.request
        original = self.topics.steps(request.pool)
        record_id = new_id()  # also the replayed request's ce_id, new to every inbox
        traceparent, tracestate = telemetry.outgoing_context(uow.traceparent, uow.tracestate)
        value, headers = encode(
            request, source=SERVICE, id=record_id, traceparent=traceparent, tracestate=tracestate
        )
        uow.publish_raw(
            dead_letter(
                topic=original,
                partition=-1,  # rebuilt from StepFailed, not consumed from the pool's topic
                offset=-1,
                key=f"{failure.task_id}/{failure.step_id}".encode(),
                value=value,
                headers=headers,
                reason=DlqReason.STEP_ABANDONED,
                error_type=failure.error.type,
                error_message=failure.error.message,
                service=SERVICE,
                attempts=failure.attempt,
                extra={
                    DlqHeader.ERROR_CLASS: failure.error.error_class,
                    DlqHeader.TASK_ID: failure.task_id,
                    DlqHeader.STEP_ID: failure.step_id,
                    DlqHeader.ABANDONED: abandon.why.value,
                },
            )
        )
        uow.publish(
            self.topics.step_results,
            StepAbandoned.for_failure(
                failure,
                detail=abandon.detail,
                dlq=DlqLocation(topic=self.topics.dlq(original), record_id=record_id),
            ),
            key=failure.task_id,
        )
        return record_id

    @staticmethod
    def _retry_already_scheduled(uow: UnitOfWork, failure: StepFailed) -> bool:
        row = uow.conn.execute(
            sa.select(failures.c.id)
            .where(
                failures.c.task_id == failure.task_id,
                failures.c.step_id == failure.step_id,
                failures.c.attempt == failure.attempt,
                failures.c.decision == "retry",
            )
            .limit(1)
        ).first()
        return row is not None

    @staticmethod
    def _retries_of(uow: UnitOfWork, task_id: str) -> int:
        """Retries recovery has scheduled for the task's steps so far."""
        count = uow.conn.execute(
            sa.select(sa.func.count())
            .select_from(failures)
            .where(failures.c.task_id == task_id, failures.c.decision == "retry")
        ).scalar_one()
        return int(count)

    @staticmethod
    def _record(
        uow: UnitOfWork, failure: StepFailed, now: datetime, *, decision: str, **extra: Any
    ) -> None:
        uow.conn.execute(
            failures.insert().values(
                task_id=failure.task_id,
                step_id=failure.step_id,
                attempt=failure.attempt,
                pool=failure.request.pool,
                error_type=failure.error.type,
                error_class=failure.error.error_class,
                message=failure.error.message,
                decision=decision,
                at=now,
                **extra,
            )
        )

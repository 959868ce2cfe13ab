"""The router's use cases: accept a task, advance its run, end it, and watch
for steps and tasks that outlive their time. Decisions live in decisions.py
and routing.py; this module applies them to the stored state and records
every transition in the history."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from podium_contracts import (
    DlqLocation,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    StepSummary,
    TaskAccepted,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskError,
    TaskFailed,
    TaskRejected,
    TaskSubmitted,
    UnknownTask,
    Usage,
)
from podium_router.decisions import (
    budget_exceeded,
    idempotency_key,
    runnable_steps,
    step_input,
    step_timeout,
    task_output,
    template_context,
    watch_timeout,
)
from podium_router.expressions import ExpressionError, ResultTooLarge
from podium_router.rejections import Submission, refused_submission
from podium_router.repository import RunRepository
from podium_router.routing import Route, choose_route
from podium_router.state import TERMINAL_RUN, RunStatus, StepStatus
from podium_router.workflows import StepDef, Workflow, WorkflowCatalog
from podium_shared import Refusal, Topics, UnitOfWork, telemetry
from podium_shared.consumer import record_headers
from podium_shared.limits import TOO_LARGE, too_large

log = structlog.get_logger(__name__)

Row = Any


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _owner(run: Row) -> dict[str, Any]:
    """Whose task it was, for consumers of task events (memory's episodes)."""
    digest = hashlib.sha256(orjson.dumps(run.input, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {"tenant": run.tenant, "subject": run.subject, "input_digest": digest}


class Router:
    def __init__(
        self, catalog: WorkflowCatalog, topics: Topics, *, step_timeout_s: float = 600.0
    ) -> None:
        self.catalog = catalog
        self.topics = topics
        self.step_timeout_s = step_timeout_s  # the watchdog's wait for a step without one

    # -- tasks -------------------------------------------------------------------------------

    def accept_task(self, task: TaskSubmitted, uow: UnitOfWork) -> None:
        """Start a run for a new task; a repeated task_id starts nothing."""
        repo = RunRepository(uow.conn)
        if repo.get_run(task.task_id) is not None:
            log.info("duplicate submission ignored", task_id=task.task_id)
            return
        now = datetime.now(UTC)
        workflow = self.catalog.get(task.workflow, task.workflow_version)
        repo.add_run(
            task_id=task.task_id,
            workflow=task.workflow,
            workflow_version=workflow.version if workflow else 0,
            definition=workflow.model_dump(mode="json", by_alias=True) if workflow else {},
            tenant=task.tenant,
            subject=task.subject,
            priority=task.priority,
            metadata=task.metadata,
            input=task.input,
            deadline=task.deadline,
            budget_cost_usd=task.budget.max_cost_usd,
            budget_tokens=task.budget.max_tokens,
            cost_usd=0.0,
            tokens=0,
            accepted_at=now,
        )
        if workflow is None:
            wanted = f"{task.workflow!r}" + (
                f" version {task.workflow_version}" if task.workflow_version else ""
            )
            self._fail(
                repo,
                uow,
                task.task_id,
                task.workflow,
                TaskError(
                    type="unknown_workflow",
                    message=f"no workflow named {wanted} (known: {', '.join(self.catalog.names)})",
                ),
                now,
            )
            return
        why = too_large("the task's input", task.input)
        if why:
            self._fail(
                repo, uow, task.task_id, task.workflow, TaskError(type=TOO_LARGE, message=why), now
            )
            return
        repo.record(
            task.task_id,
            now,
            "accepted",
            workflow_version=workflow.version,
            cause=f"submitted for {workflow.name} v{workflow.version}",
        )
        uow.publish(
            self.topics.task_events,
            TaskAccepted(
                task_id=task.task_id,
                workflow=workflow.name,
                workflow_version=workflow.version,
                accepted_at=now,
            ),
            key=task.task_id,
        )
        run = repo.get_run(task.task_id)
        self._advance(repo, uow, run, workflow, now)

    def reject(self, refusal: Refusal, uow: UnitOfWork) -> None:
        """Answer a submission that went to the dead-letter topic with TaskRejected."""
        record, event = refusal.record, refusal.event
        if event is None:
            who = refused_submission(record.key, record.value, record_headers(record))
        elif isinstance(event.payload, TaskSubmitted):
            task = event.payload
            who = Submission(task.task_id, task.workflow, event.envelope.id)
        else:
            return  # a cancel request or a step result: no submitter waits on it
        if who is None:
            log.warning("refused record names no task; dead-lettered only", offset=record.offset)
            return
        if RunRepository(uow.conn).get_run(who.task_id, lock=False) is not None:
            return  # the task exists: a refused repeat of its task_id changes nothing
        dlq_topic = Topics.dlq(record.topic)
        uow.publish(
            self.topics.task_events,
            TaskRejected(
                task_id=who.task_id,
                workflow=who.workflow,
                error=TaskError(
                    type=refusal.reason,
                    # Without a ce_id there is no record id: say at least where it went.
                    message=refusal.message[:2000]
                    + ("" if who.ce_id else f" (dead-lettered to {dlq_topic})"),
                ),
                dlq=DlqLocation(topic=dlq_topic, record_id=who.ce_id) if who.ce_id else None,
                rejected_at=datetime.now(UTC),
            ),
            key=who.task_id,
        )

    def cancel_task(self, request: TaskCancelRequested, uow: UnitOfWork) -> None:
        """Stop dispatching and end the task as cancelled."""
        repo = RunRepository(uow.conn)
        run = repo.get_run(request.task_id)
        now = datetime.now(UTC)
        if run is None:
            raise UnknownTask(
                f"cancel requested for task {request.task_id!r}, which was never submitted here"
            )
        if run.status in TERMINAL_RUN:
            repo.record(
                run.task_id,
                now,
                "cancel_ignored",
                cause=f"cancel requested but the task is already {run.status}",
            )
            return
        repo.cancel_open_steps(run.task_id, now)
        reason = request.reason or "cancel requested"
        repo.finish_run(
            run.task_id, RunStatus.CANCELLED, now, error={"type": "cancelled", "message": reason}
        )
        repo.record(
            run.task_id,
            now,
            "cancelled",
            cause=reason,
            next="nothing: late step results are ignored",
        )
        uow.publish(
            self.topics.task_events,
            TaskCancelled(
                task_id=run.task_id, workflow=run.workflow, reason=reason, cancelled_at=now
            ),
            key=run.task_id,
        )

    # -- steps -------------------------------------------------------------------------------

    def step_completed(self, result: StepCompleted, uow: UnitOfWork) -> None:
        """Record a step's output, then dispatch what it unblocked or finish the task."""
        repo = RunRepository(uow.conn)
        run = repo.get_run(result.task_id)
        now = datetime.now(UTC)
        if run is None:
            raise UnknownTask(
                f"a result for task {result.task_id!r}, which was never submitted here"
            )
        if self._reopens(repo, run, result, now):
            run = repo.get_run(result.task_id)
        if run is None or run.status != RunStatus.RUNNING:
            if run is not None:
                repo.record(
                    run.task_id,
                    now,
                    "late_result_ignored",
                    step_id=result.step_id,
                    attempt=result.attempt,
                    cause=f"the task is {run.status}",
                )
            return
        if not repo.update_step(
            result.task_id,
            result.step_id,
            only_if={StepStatus.DISPATCHED, StepStatus.FAILED},
            status=StepStatus.COMPLETED,
            output=result.output,
            usage=result.usage.model_dump(),
            duration_ms=result.duration_ms,
            attempts=result.attempt,
            finished_at=now,
            deadline_at=None,
        ):
            return  # a duplicate, or a result for a step already settled
        usage = result.usage
        cost = run.cost_usd + usage.cost_usd
        tokens = run.tokens + usage.prompt_tokens + usage.completion_tokens
        repo.update_run(run.task_id, cost_usd=cost, tokens=tokens)
        repo.record(
            run.task_id,
            now,
            "step_completed",
            step_id=result.step_id,
            attempt=result.attempt,
            pool=result.pool,
            capability=result.capability,
            cause=f"{result.duration_ms:.1f} ms"
            + (
                f", ${usage.cost_usd:.4f}, {usage.prompt_tokens + usage.completion_tokens} tokens"
                if usage.cost_usd or usage.prompt_tokens
                else ""
            ),
        )
        over = budget_exceeded(cost, tokens, run.budget_cost_usd, run.budget_tokens)
        if over:
            self._fail(
                repo,
                uow,
                run.task_id,
                run.workflow,
                TaskError(type="budget_exceeded", message=over, step_id=result.step_id),
                now,
            )
            return
        self._advance(
            repo, uow, repo.get_run(run.task_id), Workflow.model_validate(run.definition), now
        )

    @staticmethod
    def _reopens(repo: RunRepository, run: Row, result: StepCompleted, now: datetime) -> bool:
        """A replayed step that now succeeds reopens the task it failed."""
        if run.status != RunStatus.FAILED or (run.error or {}).get("step_id") != result.step_id:
            return False
        step = repo.get_step(run.task_id, result.step_id)
        if step is None or step.status != StepStatus.ABANDONED:
            return False
        repo.update_step(run.task_id, result.step_id, status=StepStatus.DISPATCHED)
        repo.update_run(run.task_id, status=RunStatus.RUNNING, error=None, finished_at=None)
        repo.record(
            run.task_id,
            now,
            "reopened",
            step_id=result.step_id,
            attempt=result.attempt,
            cause=f"step {result.step_id} succeeded on replay",
            next="carrying on from that step",
        )
        return True

    def retry_scheduled(self, retry: StepRetryScheduled, uow: UnitOfWork) -> None:
        """Recovery will run the step again: watch the new attempt."""
        repo = RunRepository(uow.conn)
        run = repo.get_run(retry.task_id)
        if run is None:
            raise UnknownTask(f"a retry for task {retry.task_id!r}, which was never submitted here")
        if run.status != RunStatus.RUNNING:
            return
        step = repo.get_step(retry.task_id, retry.step_id)
        if step is None or step.status == StepStatus.COMPLETED:
            return
        now = datetime.now(UTC)
        due = _aware(retry.due_at) or now
        deadline = due + timedelta(seconds=step.timeout_s) if step.timeout_s else None
        repo.update_step(
            retry.task_id,
            retry.step_id,
            status=StepStatus.DISPATCHED,
            attempts=retry.attempt,
            pool=retry.pool,
            model=retry.model,
            deadline_at=deadline,
        )
        wait = max((due - now).total_seconds(), 0)
        repo.record(
            run.task_id,
            now,
            "retry_scheduled",
            step_id=retry.step_id,
            attempt=retry.attempt,
            pool=retry.pool,
            capability=step.capability,
            model=retry.model,
            cause=f"attempt {retry.attempt - 1} failed: {retry.error.type}: {retry.error.message}",
            next=f"attempt {retry.attempt} on pool {retry.pool} in {wait:.1f}s",
        )

    def step_abandoned(self, abandoned: StepAbandoned, uow: UnitOfWork) -> None:
        """Recovery gave up on a step: fail its task, naming the DLQ record."""
        repo = RunRepository(uow.conn)
        run = repo.get_run(abandoned.task_id)
        if run is None:
            raise UnknownTask(
                f"an abandoned step of task {abandoned.task_id!r}, which was never submitted here"
            )
        if run.status != RunStatus.RUNNING:
            return
        now = datetime.now(UTC)
        if not repo.update_step(
            abandoned.task_id,
            abandoned.step_id,
            only_if={StepStatus.DISPATCHED, StepStatus.FAILED},
            status=StepStatus.ABANDONED,
            attempts=abandoned.attempts,
            finished_at=now,
            deadline_at=None,
        ):
            return  # it completed after all (a late result won the race)
        where = (
            f"; dead letter {abandoned.dlq.topic} {abandoned.dlq.record_id}"
            if abandoned.dlq
            else ""
        )
        error_type, message = abandoned.error.type, abandoned.error.message
        deadline = _aware(run.deadline)
        if deadline is not None and now >= deadline and error_type == "timeout":
            # The step's timeout was the task's remaining time: say which limit it was.
            error_type = "deadline_exceeded"
            message = f"deadline {deadline.isoformat()} passed during step {abandoned.step_id}"
        repo.record(
            run.task_id,
            now,
            "step_abandoned",
            step_id=abandoned.step_id,
            attempt=abandoned.attempts,
            cause=f"{abandoned.error.type}: {abandoned.error.message}{where}",
        )
        self._fail(
            repo,
            uow,
            run.task_id,
            run.workflow,
            TaskError(type=error_type, message=message, step_id=abandoned.step_id),
            now,
            dlq=abandoned.dlq,
        )

    # -- the watchdog ------------------------------------------------------------------------

    def watchdog(self, uow: UnitOfWork, now: datetime | None = None) -> int:
        """Fail steps that outlived their timeout and tasks past their deadline."""
        now = now or datetime.now(UTC)
        repo = RunRepository(uow.conn)
        acted = 0
        for run in repo.overdue_runs(now):
            self._fail(
                repo,
                uow,
                run.task_id,
                run.workflow,
                TaskError(
                    type="deadline_exceeded",
                    message=f"deadline {run.deadline.isoformat()} passed",
                ),
                now,
            )
            repo.cancel_open_steps(run.task_id, now)
            acted += 1
        for step in repo.overdue_steps(now):
            request = StepRequested.model_validate(step.request)
            request = request.model_copy(
                update={"attempt": step.attempts, "pool": step.pool, "model": step.model}
            )
            repo.update_step(step.task_id, step.step_id, status=StepStatus.FAILED, deadline_at=None)
            error = StepError(
                type="timeout",
                error_class="retryable",
                message=f"no result within {step.timeout_s}s (router watchdog)",
            )
            repo.record(
                step.task_id,
                now,
                "step_timed_out",
                step_id=step.step_id,
                attempt=step.attempts,
                pool=step.pool,
                capability=step.capability,
                cause=error.message,
                next="handed to recovery",
            )
            uow.publish(
                self.topics.step_failures,
                StepFailed(
                    task_id=step.task_id,
                    step_id=step.step_id,
                    capability=step.capability,
                    pool=step.pool,
                    attempt=step.attempts,
                    error=error,
                    duration_ms=(step.timeout_s or 0) * 1000,
                    request=request,
                ),
                key=step.task_id,
            )
            acted += 1
        return acted

    # -- internals ---------------------------------------------------------------------------

    def _advance(
        self, repo: RunRepository, uow: UnitOfWork, run: Row, workflow: Workflow, now: datetime
    ) -> None:
        """Dispatch every step that became runnable, or complete the task.

        Every input and route is worked out before anything is dispatched, so a
        template error fails the task without half of a fan-out already sent."""
        steps = repo.steps(run.task_id)
        completed = {s.step_id: s.output for s in steps if s.status == StepStatus.COMPLETED}
        context = template_context(
            {
                "task_id": run.task_id,
                "workflow": run.workflow,
                "tenant": run.tenant,
                "subject": run.subject,
                "priority": run.priority,
                "metadata": run.metadata,
            },
            run.input,
            completed,
        )
        current: str | None = None
        try:
            if len(completed) == len(workflow.steps):
                output = task_output(workflow, context)
                why = too_large("the task's output", output)
                if why:
                    self._fail(
                        repo,
                        uow,
                        run.task_id,
                        run.workflow,
                        TaskError(type=TOO_LARGE, message=why),
                        now,
                    )
                    return
                self._complete(repo, uow, run, steps, output, now)
                return
            plans = []
            for step in runnable_steps(workflow, {s.step_id for s in steps}, set(completed)):
                current = step.id
                plans.append((step, choose_route(step, context), step_input(step, context)))
        except ExpressionError as exc:
            where = f"step {current}" if current else "workflow output"
            kind = TOO_LARGE if isinstance(exc, ResultTooLarge) else "template_error"
            self._fail(
                repo,
                uow,
                run.task_id,
                run.workflow,
                TaskError(type=kind, message=f"{where}: {exc}", step_id=current),
                now,
            )
            return
        for step, _, data in plans:
            # Before anything is dispatched: a step whose input could never be sent
            # fails the task now, rather than leaving a fan-out half sent.
            why = too_large(f"step {step.id}'s input", data)
            if why:
                error = TaskError(type=TOO_LARGE, message=why, step_id=step.id)
                self._fail(repo, uow, run.task_id, run.workflow, error, now)
                return
        for step, route, data in plans:
            # The step's message carries this span's context: the executor's work hangs under it.
            with telemetry.span(
                "router.route",
                **{
                    "podium.task_id": run.task_id,
                    "podium.step_id": step.id,
                    "podium.workflow": workflow.name,
                    "podium.capability": step.uses,
                    "podium.route.pool": route.pool,
                    "podium.route.model": route.model,
                    "podium.route.rule": route.rule,
                    "podium.route.reason": route.reason,
                },
            ):
                self._dispatch(repo, uow, run, workflow, step, route, data, now)

    def _dispatch(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        run: Row,
        workflow: Workflow,
        step: StepDef,
        route: Route,
        data: dict[str, Any],
        now: datetime,
    ) -> None:
        deadline = _aware(run.deadline)
        timeout = step_timeout(step.timeout, deadline, now)
        # Every dispatched step is watched, with a default when it names no timeout: a
        # lost request or result is then re-driven by recovery instead of waited on forever.
        watch = watch_timeout(step.timeout, self.step_timeout_s, deadline, now)
        request = StepRequested(
            task_id=run.task_id,
            step_id=step.id,
            workflow=workflow.name,
            capability=step.uses,
            pool=route.pool,
            input=data,
            idempotency_key=idempotency_key(run.task_id, step.id),
            tenant=run.tenant,
            subject=run.subject,
            timeout_s=timeout,
            model=route.model,
            retry=step.retry.policy() if step.retry else None,
            fallback=step.fallback.policy() if step.fallback else None,
        )
        repo.add_step(
            task_id=run.task_id,
            step_id=step.id,
            capability=step.uses,
            pool=route.pool,
            model=route.model,
            request=request.model_dump(mode="json"),
            timeout_s=watch,
            deadline_at=now + timedelta(seconds=watch),
            dispatched_at=now,
        )
        repo.record(
            run.task_id,
            now,
            "step_dispatched",
            step_id=step.id,
            attempt=1,
            pool=route.pool,
            capability=step.uses,
            model=route.model,
            workflow_version=workflow.version,
            cause=route.reason,
            next=f"waiting for {step.uses} on pool {route.pool}"
            + f" (timeout {watch:.1f}s{'' if timeout else ', the default'})",
        )
        uow.publish(self.topics.steps(route.pool), request, key=f"{run.task_id}/{step.id}")

    def _complete(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        run: Row,
        steps: list[Row],
        output: Any,
        now: datetime,
    ) -> None:
        usage = sum((Usage.model_validate(s.usage or {}) for s in steps), Usage())
        repo.finish_run(run.task_id, RunStatus.COMPLETED, now, output=output)
        repo.record(run.task_id, now, "completed", cause=f"{len(steps)} steps completed")
        uow.publish(
            self.topics.task_events,
            TaskCompleted(
                task_id=run.task_id,
                workflow=run.workflow,
                output=output,
                steps=[
                    StepSummary(
                        step_id=s.step_id,
                        capability=s.capability,
                        pool=s.pool,
                        attempts=s.attempts,
                        duration_ms=s.duration_ms or 0.0,
                    )
                    for s in steps
                ],
                usage=usage,
                accepted_at=_aware(run.accepted_at),
                completed_at=now,
                **_owner(run),
            ),
            key=run.task_id,
        )

    def _fail(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        task_id: str,
        workflow: str,
        error: TaskError,
        now: datetime,
        dlq: DlqLocation | None = None,
    ) -> None:
        repo.finish_run(task_id, RunStatus.FAILED, now, error=error.model_dump())
        run = repo.get_run(task_id, lock=False)
        repo.record(
            task_id,
            now,
            "failed",
            step_id=error.step_id,
            cause=f"{error.type}: {error.message}",
            next="nothing: the task is over"
            + (f"; replay {dlq.record_id} from {dlq.topic} after a fix" if dlq else ""),
        )
        uow.publish(
            self.topics.task_events,
            TaskFailed(
                task_id=task_id,
                workflow=workflow,
                error=error,
                dlq=dlq,
                failed_at=now,
                **(_owner(run) if run is not None else {}),
            ),
            key=task_id,
        )

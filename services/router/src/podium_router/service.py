"""The router's use cases: accept a task, advance its run, end it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from podium_contracts import (
    StepAbandoned,
    StepCompleted,
    StepRequested,
    StepSummary,
    TaskAccepted,
    TaskCompleted,
    TaskError,
    TaskFailed,
    TaskSubmitted,
    Usage,
)
from podium_shared import Topics, UnitOfWork

from podium_router.decisions import idempotency_key, runnable_steps, step_input, task_output
from podium_router.repository import RunRepository
from podium_router.routing import pool_for
from podium_router.state import RunStatus, StepStatus
from podium_router.workflows import Workflow, WorkflowCatalog

log = structlog.get_logger(__name__)


class Router:
    def __init__(self, catalog: WorkflowCatalog, topics: Topics) -> None:
        self.catalog = catalog
        self.topics = topics

    def accept_task(self, task: TaskSubmitted, uow: UnitOfWork) -> None:
        """Start a run for a new task; a repeated task_id starts nothing."""
        repo = RunRepository(uow.conn)
        if repo.get_run(task.task_id) is not None:
            log.info("duplicate submission ignored", task_id=task.task_id)
            return
        now = datetime.now(UTC)
        workflow = self.catalog.latest(task.workflow)
        if workflow is None:
            repo.add_run(
                task_id=task.task_id,
                workflow=task.workflow,
                workflow_version=0,
                definition={},
                tenant=task.tenant,
                subject=task.subject,
                input=task.input,
                accepted_at=now,
            )
            self._fail(
                repo,
                uow,
                task.task_id,
                task.workflow,
                TaskError(
                    type="unknown_workflow",
                    message=f"no workflow named {task.workflow!r} "
                    f"(known: {', '.join(self.catalog.names)})",
                ),
            )
            return
        repo.add_run(
            task_id=task.task_id,
            workflow=workflow.name,
            workflow_version=workflow.version,
            definition=workflow.model_dump(mode="json", by_alias=True),
            tenant=task.tenant,
            subject=task.subject,
            input=task.input,
            accepted_at=now,
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
        self._dispatch_ready(repo, uow, task.task_id, workflow, set(), set())

    def step_completed(self, result: StepCompleted, uow: UnitOfWork) -> None:
        """Record a step's output, then dispatch what it unblocked or finish the task."""
        repo = RunRepository(uow.conn)
        run = repo.get_run(result.task_id)
        if run is None or run.status != RunStatus.RUNNING:
            log.info("result for a run that is not running", task_id=result.task_id)
            return
        if not repo.finish_step(
            result.task_id,
            result.step_id,
            StepStatus.COMPLETED,
            output=result.output,
            usage=result.usage.model_dump(),
            duration_ms=result.duration_ms,
            attempts=result.attempt,
            finished_at=datetime.now(UTC),
        ):
            return  # a late duplicate of a step already settled
        workflow = Workflow.model_validate(run.definition)
        steps = repo.steps(result.task_id)
        started = {s.step_id for s in steps}
        completed = {s.step_id for s in steps if s.status == StepStatus.COMPLETED}
        if completed == {s.id for s in workflow.steps}:
            self._complete(repo, uow, run, workflow, steps)
        else:
            self._dispatch_ready(
                repo,
                uow,
                run.task_id,
                workflow,
                started,
                completed,
                run.input,
                run.tenant,
                run.subject,
            )

    def step_abandoned(self, abandoned: StepAbandoned, uow: UnitOfWork) -> None:
        """Recovery gave up on a step: fail its task, naming the DLQ record."""
        repo = RunRepository(uow.conn)
        run = repo.get_run(abandoned.task_id)
        if run is None or run.status != RunStatus.RUNNING:
            return
        repo.finish_step(
            abandoned.task_id,
            abandoned.step_id,
            StepStatus.ABANDONED,
            attempts=abandoned.attempts,
            finished_at=datetime.now(UTC),
        )
        self._fail(
            repo,
            uow,
            run.task_id,
            run.workflow,
            TaskError(
                type=abandoned.error.type,
                message=abandoned.error.message,
                step_id=abandoned.step_id,
            ),
            dlq=abandoned.dlq,
        )

    def _dispatch_ready(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        task_id: str,
        workflow: Workflow,
        started: set[str],
        completed: set[str],
        task_input: dict[str, Any] | None = None,
        tenant: str | None = None,
        subject: str | None = None,
    ) -> None:
        if task_input is None:
            run = repo.get_run(task_id)
            assert run is not None
            task_input, tenant, subject = run.input, run.tenant, run.subject
        now = datetime.now(UTC)
        for step in runnable_steps(workflow, started, completed):
            pool = pool_for(step)
            repo.add_step(
                task_id=task_id, step_id=step.id, capability=step.uses, pool=pool, dispatched_at=now
            )
            uow.publish(
                self.topics.steps(pool),
                StepRequested(
                    task_id=task_id,
                    step_id=step.id,
                    workflow=workflow.name,
                    capability=step.uses,
                    pool=pool,
                    input=step_input(step, task_input),
                    idempotency_key=idempotency_key(task_id, step.id),
                    tenant=tenant or "default",
                    subject=subject,
                    timeout_s=step.timeout,
                ),
                key=f"{task_id}/{step.id}",
            )

    def _complete(
        self, repo: RunRepository, uow: UnitOfWork, run: Any, workflow: Workflow, steps: list[Any]
    ) -> None:
        now = datetime.now(UTC)
        outputs = {s.step_id: s.output for s in steps}
        output = task_output(workflow, outputs)
        usage = sum((Usage.model_validate(s.usage or {}) for s in steps), Usage())
        repo.finish_run(run.task_id, RunStatus.COMPLETED, now, output=output)
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
                accepted_at=run.accepted_at,
                completed_at=now,
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
        dlq: Any = None,
    ) -> None:
        now = datetime.now(UTC)
        repo.finish_run(task_id, RunStatus.FAILED, now, error=error.model_dump())
        uow.publish(
            self.topics.task_events,
            TaskFailed(task_id=task_id, workflow=workflow, error=error, dlq=dlq, failed_at=now),
            key=task_id,
        )

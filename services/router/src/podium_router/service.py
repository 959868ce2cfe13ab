"""The router's use cases: accept a task, advance its run, end it, and watch
for steps and tasks that outlive their time. What happens is decided in
decisions.py (``decide``, a pure function); this module is the edge around it:
it loads the run as typed records, asks ``decide``, and applies the actions to
the stored state, the history and the outbox, in the caller's transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

import orjson
import structlog
from sqlalchemy.engine import Connection

from podium_contracts import (
    DlqLocation,
    Event,
    HistoryKind,
    PlannedStep,
    StepAbandoned,
    StepCompleted,
    StepRetryScheduled,
    TaskAccepted,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskError,
    TaskErrorType,
    TaskFailed,
    TaskHistoryRecorded,
    TaskRejected,
    TaskSubmitted,
)
from podium_router.decisions import (
    Accept,
    Action,
    Cancel,
    Complete,
    DeadlinePassed,
    Decision,
    Dispatch,
    Fail,
    GiveUp,
    Ignore,
    Planned,
    Reject,
    Reopen,
    Rewatch,
    Settle,
    Start,
    Trigger,
    bound_tenant,
    decide,
    timed_out,
)
from podium_router.records import Run
from podium_router.rejections import Submission, refused_submission
from podium_router.repository import BatchRepository, RunRepository
from podium_router.settings import DEFAULT_LIMITS, Limits
from podium_router.state import RunStatus, StepStatus
from podium_router.workflows import WorkflowCatalog
from podium_shared import Refusal, Topics, UnitOfWork, telemetry
from podium_shared.consumer import record_headers

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
TaskEvent = TaskAccepted | TaskCompleted | TaskFailed | TaskCancelled | TaskRejected

# The repository of the batch being applied (``Router.batch``), if any: a context
# variable, so a batch written on a worker thread never meets another's.
_BATCH: ContextVar[BatchRepository | None] = ContextVar("podium_router_batch", default=None)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _owner(run: Run) -> dict[str, Any]:
    """Whose task it was, for consumers of task events (memory's episodes)."""
    digest = hashlib.sha256(orjson.dumps(run.input, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {"tenant": run.tenant, "subject": run.subject, "input_digest": digest}


class Router:
    def __init__(
        self,
        catalog: WorkflowCatalog,
        topics: Topics,
        *,
        step_timeout_s: float = 600.0,
        limits: Limits = DEFAULT_LIMITS,
        clock: Clock = utc_now,
        tenants: tuple[str, ...] = (),
    ) -> None:
        self.catalog = catalog
        self.topics = topics
        # Tenants bound to topics of their own: read from each one's ingress topic, and
        # told of their tasks on their own task-events topic too.
        self.tenants = frozenset(tenants)
        self.step_timeout_s = step_timeout_s  # the watchdog's wait for a step without one
        self.limits = limits
        self.clock = clock

    def bind(self, event: Event) -> Event:
        """The event with the tenant its topic binds it to (see ``bound_tenant``)."""
        payload = event.payload
        tenant = self._bound(event.topic)
        if tenant is None or not isinstance(payload, TaskSubmitted | TaskCancelRequested):
            return event
        return Event(event.envelope, bound_tenant(tenant, payload), event.topic)

    def _bound(self, topic: str | None) -> str | None:
        tenant = self.topics.tenant_of(topic) if topic else None
        return tenant if tenant in self.tenants else None

    # -- events ------------------------------------------------------------------------------

    def accept_task(self, task: TaskSubmitted, uow: UnitOfWork) -> None:
        """Start a run for a new task; a repeated task_id starts nothing."""
        self._handle(task, uow)

    def step_completed(self, result: StepCompleted, uow: UnitOfWork) -> None:
        """Record a step's output, then dispatch what it unblocked or finish the task."""
        self._handle(result, uow)

    def retry_scheduled(self, retry: StepRetryScheduled, uow: UnitOfWork) -> None:
        """Recovery will run the step again: watch the new attempt."""
        self._handle(retry, uow)

    def step_abandoned(self, abandoned: StepAbandoned, uow: UnitOfWork) -> None:
        """Recovery gave up on a step: fail its task, naming the DLQ record."""
        self._handle(abandoned, uow)

    def cancel_task(self, request: TaskCancelRequested, uow: UnitOfWork) -> None:
        """Stop dispatching and end the task as cancelled."""
        self._handle(request, uow)

    @contextmanager
    def batch(self, conn: Connection, events: list[Event]) -> Iterator[None]:
        """Apply a fetched batch's messages in few statements (``BatchRepository``):
        their runs read at once, their writes held until the last one is applied.
        Nothing is written if any of them fails; the consume loop then applies them
        one at a time, each writing as it goes."""
        task_ids = {t for e in events if isinstance(t := getattr(e.payload, "task_id", None), str)}
        repo = BatchRepository(conn, task_ids)
        token = _BATCH.set(repo)
        try:
            yield
            repo.flush()
        finally:
            _BATCH.reset(token)

    def _repository(self, conn: Connection) -> RunRepository:
        """The batch's repository when this connection writes one, else one of its own."""
        batch = _BATCH.get()
        return batch if batch is not None and batch.conn is conn else RunRepository(conn)

    def _handle(self, event: Trigger, uow: UnitOfWork) -> None:
        """Load the run (locked) with its steps, decide, apply."""
        repo = self._repository(uow.conn)
        run, steps = repo.run_with_steps(event.task_id)
        now = self.clock()
        decision = decide(
            run,
            steps,
            event,
            now=now,
            catalog=self.catalog,
            default_watch_s=self.step_timeout_s,
            limits=self.limits,
        )
        self._apply(repo, uow, run, decision, now)

    def reject(self, refusal: Refusal, uow: UnitOfWork) -> None:
        """Answer a submission that went to the dead-letter topic with TaskRejected."""
        record, event = refusal.record, refusal.event
        if event is None:
            who = refused_submission(record.key, record.value, record_headers(record))
        elif isinstance(event.payload, TaskSubmitted):
            task = event.payload
            who = Submission(task.task_id, task.workflow, event.envelope.id, task.tenant)
        else:
            return  # a cancel request or a step result: no submitter waits on it
        if who is None:
            log.warning("refused record names no task; dead-lettered only", offset=record.offset)
            return
        bound = self._bound(record.topic)
        if bound is not None:
            # On a tenant's own topic the writer is that tenant, whatever the record claims.
            who = replace(who, tenant=bound)
        existing = RunRepository(uow.conn).get_run(who.task_id, lock=False)
        if existing is not None and who.tenant in (None, existing.tenant):
            # A refused repeat of a task's id changes nothing, and an answer its waiters
            # could take for the task's own is not sent; a refused record that says it
            # is another tenant's is answered to that tenant (its waiters read only theirs).
            return
        dlq_topic = Topics.dlq(record.topic)
        self._tell(
            uow,
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
                rejected_at=self.clock(),
                tenant=who.tenant,
            ),
        )

    def _tell(self, uow: UnitOfWork, outcome: TaskEvent) -> None:
        """Publish a task's event to the task-events topic, keyed by its task id, and to
        its tenant's own when the tenant is bound to topics of its own."""
        uow.publish(self.topics.task_events, outcome, key=outcome.task_id)
        if outcome.tenant in self.tenants:
            topic = self.topics.tenant_task_events(outcome.tenant)
            uow.publish(topic, outcome, key=outcome.task_id)

    def _record(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        task_id: str,
        at: datetime,
        kind: HistoryKind,
        **values: Any,
    ) -> None:
        """Append one entry to the task's history and, in the same transaction, publish
        it (TaskHistoryRecorded on task-events, keyed by the task: in order per task),
        so readers that may not open this database (the api) learn the story too."""
        written = repo.record(task_id, at, kind, **values)
        uow.publish(
            self.topics.task_events,
            TaskHistoryRecorded(task_id=task_id, at=at, kind=kind.value, **written),
            key=task_id,
        )

    # -- the watchdog ------------------------------------------------------------------------

    def watchdog(self, uow: UnitOfWork, now: datetime | None = None) -> int:
        """Fail steps that outlived their timeout and tasks past their deadline."""
        now = now or self.clock()
        repo = RunRepository(uow.conn)
        acted = 0
        for run in repo.overdue_runs(now):
            decision = decide(
                run,
                repo.steps(run.task_id),
                DeadlinePassed(run.task_id),
                now=now,
                catalog=self.catalog,
                default_watch_s=self.step_timeout_s,
                limits=self.limits,
            )
            self._apply(repo, uow, run, decision, now)
            acted += 1
        for step in repo.overdue_steps(now):
            failure = timed_out(step)
            repo.update_step(step.task_id, step.step_id, status=StepStatus.FAILED, deadline_at=None)
            self._record(
                repo,
                uow,
                step.task_id,
                now,
                HistoryKind.STEP_TIMED_OUT,
                step_id=step.step_id,
                attempt=step.attempts,
                pool=step.pool,
                capability=step.capability,
                cause=failure.error.message,
                next="handed to recovery",
            )
            uow.publish(self.topics.step_failures, failure, key=step.task_id)
            acted += 1
        return acted

    # -- applying a decision -----------------------------------------------------------------

    def _apply(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        run: Run | None,
        decision: Decision,
        now: datetime,
    ) -> None:
        for action in decision:
            if isinstance(action, Start):
                repo.add_run(action.run)
                run = action.run
                continue
            assert run is not None, "decide acts on a stored run, or starts one first"
            if not self._act(repo, uow, run, action, now):
                return

    def _act(
        self, repo: RunRepository, uow: UnitOfWork, run: Run, action: Action, now: datetime
    ) -> bool:
        """Apply one action; False when a guarded write found the step already settled
        (a race lost to another writer), which drops the actions after it."""
        task_id = run.task_id
        match action:
            case Start():
                raise AssertionError("_apply stores a new run itself")
            case Accept(workflow=workflow):
                self._record(
                    repo,
                    uow,
                    task_id,
                    now,
                    HistoryKind.ACCEPTED,
                    workflow_version=workflow.version,
                    cause=f"submitted for {workflow.name} v{workflow.version}",
                )
                self._tell(
                    uow,
                    TaskAccepted(
                        task_id=task_id,
                        workflow=workflow.name,
                        workflow_version=workflow.version,
                        accepted_at=now,
                        tenant=run.tenant,
                        steps=[
                            PlannedStep(step_id=s.id, capability=s.uses, depends_on=list(s.needs))
                            for s in workflow.steps
                        ],
                    ),
                )
            case Reject(task=task, error=error):
                # The run named here is the other tenant's: nothing of it is written.
                log.warning(
                    "submission refused: task_id in use by another tenant",
                    task_id=task_id,
                    tenant=task.tenant,
                )
                self._tell(
                    uow,
                    TaskRejected(
                        task_id=task.task_id,
                        workflow=task.workflow,
                        error=error,
                        rejected_at=now,
                        tenant=task.tenant,
                    ),
                )
            case Reopen(step_id=step_id, attempt=attempt):
                repo.update_step(task_id, step_id, status=StepStatus.DISPATCHED)
                repo.update_run(task_id, status=RunStatus.RUNNING, error=None, finished_at=None)
                self._record(
                    repo,
                    uow,
                    task_id,
                    now,
                    HistoryKind.REOPENED,
                    step_id=step_id,
                    attempt=attempt,
                    cause=f"step {step_id} succeeded on replay",
                    next="carrying on from that step",
                )
            case Settle(result=result, cost_usd=cost, tokens=tokens):
                if not repo.close_step(
                    task_id,
                    result.step_id,
                    StepStatus.COMPLETED,
                    now,
                    output=result.output,
                    usage=result.usage.model_dump(),
                    duration_ms=result.duration_ms,
                    attempts=result.attempt,
                ):
                    return False
                repo.update_run(task_id, cost_usd=cost, tokens=tokens)
                usage = result.usage
                self._record(
                    repo,
                    uow,
                    task_id,
                    now,
                    HistoryKind.STEP_COMPLETED,
                    step_id=result.step_id,
                    attempt=result.attempt,
                    pool=result.pool,
                    capability=result.capability,
                    cause=f"{result.duration_ms:.1f} ms"
                    + (
                        f", ${usage.cost_usd:.4f},"
                        f" {usage.prompt_tokens + usage.completion_tokens} tokens"
                        if usage.cost_usd or usage.prompt_tokens
                        else ""
                    ),
                )
            case Rewatch(retry=retry, capability=capability, deadline_at=deadline, wait_s=wait):
                repo.update_step(
                    task_id,
                    retry.step_id,
                    status=StepStatus.DISPATCHED,
                    attempts=retry.attempt,
                    pool=retry.pool,
                    model=retry.model,
                    deadline_at=deadline,
                )
                self._record(
                    repo,
                    uow,
                    task_id,
                    now,
                    HistoryKind.RETRY_SCHEDULED,
                    step_id=retry.step_id,
                    attempt=retry.attempt,
                    pool=retry.pool,
                    capability=capability,
                    model=retry.model,
                    cause=f"attempt {retry.attempt - 1} failed:"
                    f" {retry.error.type}: {retry.error.message}",
                    next=f"attempt {retry.attempt} on pool {retry.pool} in {wait:.1f}s",
                )
            case GiveUp(abandoned=abandoned):
                if not repo.close_step(
                    task_id,
                    abandoned.step_id,
                    StepStatus.ABANDONED,
                    now,
                    attempts=abandoned.attempts,
                ):
                    return False
                where = (
                    f"; dead letter {abandoned.dlq.topic} {abandoned.dlq.record_id}"
                    if abandoned.dlq
                    else ""
                )
                self._record(
                    repo,
                    uow,
                    task_id,
                    now,
                    HistoryKind.STEP_ABANDONED,
                    step_id=abandoned.step_id,
                    attempt=abandoned.attempts,
                    cause=f"{abandoned.error.type}: {abandoned.error.message}{where}",
                )
            case Dispatch(steps=planned):
                for plan in planned:
                    self._dispatch(repo, uow, run, action, plan, now)
            case Complete():
                self._complete(repo, uow, run, action, now)
            case Fail():
                self._fail(repo, uow, run, action, now)
            case Cancel(reason=reason):
                repo.cancel_open_steps(task_id, now)
                repo.finish_run(
                    task_id,
                    RunStatus.CANCELLED,
                    now,
                    error={"type": TaskErrorType.CANCELLED, "message": reason},
                )
                self._record(
                    repo,
                    uow,
                    task_id,
                    now,
                    HistoryKind.CANCELLED,
                    cause=reason,
                    next="nothing: late step results are ignored",
                )
                self._tell(
                    uow,
                    TaskCancelled(
                        task_id=task_id,
                        workflow=run.workflow,
                        reason=reason,
                        cancelled_at=now,
                        tenant=run.tenant,
                    ),
                )
            case Ignore(reason=reason, kind=kind, step_id=step_id, attempt=attempt):
                if kind is None:
                    log.info("event ignored", task_id=task_id, reason=reason)
                else:
                    self._record(
                        repo,
                        uow,
                        task_id,
                        now,
                        kind,
                        step_id=step_id,
                        attempt=attempt,
                        cause=reason,
                    )
            case _:
                assert_never(action)
        return True

    def _dispatch(
        self,
        repo: RunRepository,
        uow: UnitOfWork,
        run: Run,
        dispatch: Dispatch,
        plan: Planned,
        now: datetime,
    ) -> None:
        step, route, request, watch = plan.step, plan.route, plan.request, plan.watch_s
        workflow = dispatch.workflow
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
            self._record(
                repo,
                uow,
                run.task_id,
                now,
                HistoryKind.STEP_DISPATCHED,
                step_id=step.id,
                attempt=1,
                pool=route.pool,
                capability=step.uses,
                model=route.model,
                workflow_version=workflow.version,
                cause=route.reason,
                next=f"waiting for {step.uses} on pool {route.pool}"
                + f" (timeout {watch:.1f}s{'' if request.timeout_s else ', the default'})",
            )
            uow.publish(self.topics.steps(route.pool), request, key=f"{run.task_id}/{step.id}")

    def _complete(
        self, repo: RunRepository, uow: UnitOfWork, run: Run, done: Complete, now: datetime
    ) -> None:
        repo.finish_run(run.task_id, RunStatus.COMPLETED, now, output=done.output)
        self._record(
            repo,
            uow,
            run.task_id,
            now,
            HistoryKind.COMPLETED,
            cause=f"{len(done.steps)} steps completed",
        )
        self._tell(
            uow,
            TaskCompleted(
                task_id=run.task_id,
                workflow=run.workflow,
                output=done.output,
                steps=list(done.steps),
                usage=done.usage,
                accepted_at=run.accepted_at,
                completed_at=now,
                **_owner(run),
            ),
        )

    def _fail(
        self, repo: RunRepository, uow: UnitOfWork, run: Run, fail: Fail, now: datetime
    ) -> None:
        error, dlq = fail.error, fail.dlq
        repo.finish_run(run.task_id, RunStatus.FAILED, now, error=error.model_dump())
        if fail.close_steps:
            repo.cancel_open_steps(run.task_id, now)
        self._record(
            repo,
            uow,
            run.task_id,
            now,
            HistoryKind.FAILED,
            step_id=error.step_id,
            cause=f"{error.type}: {error.message}",
            next="nothing: the task is over"
            + (f"; replay {dlq.record_id} from {dlq.topic} after a fix" if dlq else ""),
        )
        self._tell(
            uow,
            TaskFailed(
                task_id=run.task_id,
                workflow=run.workflow,
                error=error,
                dlq=dlq,
                failed_at=now,
                **_owner(run),
            ),
        )

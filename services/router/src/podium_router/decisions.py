"""What happens next for a run, given an event: ``decide``, one pure function.

    decide(run, steps, event, now=..., catalog=..., default_watch_s=...) -> Decision

It reads the run and its steps as loaded (typed records, no database), the
event, and the time it is given, and returns the actions to take, in order.
The service applies them in one transaction: rows, history, outbox. Nothing
here reads a clock, a database or a broker, so every branch is a table test.

The actions (``Action``, a closed union):

- ``Start``     store a new run (every submission that is not a repeat);
- ``Reject``    another tenant's task holds this task_id: answer the submitter, touch nothing;
- ``Accept``    the run starts on this workflow: history ``accepted``, TaskAccepted;
- ``Reopen``    a replayed step succeeded after its task failed on it;
- ``Settle``    the step's result is stored and its usage added to the run;
- ``Rewatch``   recovery runs the step again: watch the new attempt;
- ``GiveUp``    recovery abandoned the step;
- ``Dispatch``  send these steps (none: wait for the ones running);
- ``Complete``  the task is done, with this output;
- ``Fail``      the task failed with this error;
- ``Cancel``    the task is cancelled;
- ``Ignore``    nothing changes, and why (recorded in the history when it matters).

Task ids are one namespace across tenants: a submission or a cancel request from
a tenant other than the run's is refused (``Reject``; ``Ignore`` with
``cancel_refused``), never treated as a repeat of the run, so no tenant can
start, cancel or be told about another's task by naming its id.

An event about a task never submitted here raises ``UnknownTask`` (a contract
error: the consume loop dead-letters it). Below ``decide`` are the plain
functions it is made of: what runs next, with what input, what the task
returns, whether a limit has been crossed.

Limits (``Limits``, from ``PODIUM_ROUTER_MAX_*``): a task may cause at most
``max_step_dispatches`` step attempts in all, counted before anything is sent,
so a dispatch that would cross it fails the task instead (``limit_exceeded``);
and at most ``max_fanout`` of its steps are in flight at once: runnable steps
beyond that wait for a running one to settle. Workflows wider than that are
refused at load (workflows.py); this is the second line, for runs started on a
definition loaded under other settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, assert_never

from podium_contracts import (
    DlqLocation,
    HistoryKind,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepErrorType,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    StepSummary,
    TaskCancelRequested,
    TaskError,
    TaskErrorType,
    TaskSubmitted,
    TenantMismatch,
    UnknownTask,
    Usage,
)
from podium_router.expressions import ExpressionError, ResultTooLarge
from podium_router.records import Run, Step, aware
from podium_router.routing import Route, choose_route
from podium_router.settings import DEFAULT_LIMITS, MAX_STEP_DISPATCHES, Limits
from podium_router.state import OPEN_STEP, TERMINAL_RUN, RunStatus, StepStatus
from podium_router.templates import render_json
from podium_router.workflows import StepDef, Workflow, WorkflowCatalog
from podium_shared.limits import TOO_LARGE, too_large

DEFAULT_TENANT = TaskSubmitted.model_fields["tenant"].default

# -- the events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """The watchdog found the run still running past its deadline."""

    task_id: str


Trigger = (
    TaskSubmitted
    | StepCompleted
    | StepRetryScheduled
    | StepAbandoned
    | TaskCancelRequested
    | DeadlinePassed
)

# -- the actions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Store this new run."""

    run: Run


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse ``task``, a submission under an id another tenant's run holds."""

    task: TaskSubmitted
    error: TaskError


@dataclass(frozen=True, slots=True)
class Accept:
    """The run starts on this workflow."""

    workflow: Workflow


@dataclass(frozen=True, slots=True)
class Reopen:
    """Step ``step_id`` succeeded on replay: its failed task runs again from there."""

    step_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Settle:
    """Store the step's result; the run has now spent ``cost_usd`` and ``tokens``."""

    result: StepCompleted
    cost_usd: float
    tokens: int


@dataclass(frozen=True, slots=True)
class Rewatch:
    """Recovery runs the step again in ``wait_s``: watch it until ``deadline_at``."""

    retry: StepRetryScheduled
    capability: str
    deadline_at: datetime | None
    wait_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Recovery abandoned the step."""

    abandoned: StepAbandoned


@dataclass(frozen=True, slots=True)
class Planned:
    """One step to send: where (``route``), the request, how long to watch it."""

    step: StepDef
    route: Route
    request: StepRequested
    watch_s: float


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send these steps of ``workflow``; none means waiting for the ones running."""

    workflow: Workflow
    steps: tuple[Planned, ...]


@dataclass(frozen=True, slots=True)
class Complete:
    """Every step completed: the task's output, its total usage, its steps."""

    output: Any
    usage: Usage
    steps: tuple[StepSummary, ...]


@dataclass(frozen=True, slots=True)
class Fail:
    """The task failed; ``close_steps`` cancels its open steps too."""

    error: TaskError
    dlq: DlqLocation | None = None
    close_steps: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop dispatching and end the task as cancelled."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing changes; with ``kind``, the history says so."""

    reason: str
    kind: HistoryKind | None = None
    step_id: str | None = None
    attempt: int | None = None


Action = (
    Start
    | Reject
    | Accept
    | Reopen
    | Settle
    | Rewatch
    | GiveUp
    | Dispatch
    | Complete
    | Fail
    | Cancel
    | Ignore
)
Decision = tuple[Action, ...]
Advance = Dispatch | Complete | Fail

# -- the decision ----------------------------------------------------------------------------


def decide(
    run: Run | None,
    steps: Sequence[Step],
    event: Trigger,
    *,
    now: datetime,
    catalog: WorkflowCatalog,
    default_watch_s: float,
    limits: Limits = DEFAULT_LIMITS,
) -> Decision:
    """What to do about ``event`` for the task's run (None: no run yet) and its steps."""
    match event:
        case TaskSubmitted():
            return _submitted(run, event, now, catalog, default_watch_s, limits)
        case StepCompleted():
            run = _known(run, f"a result for task {event.task_id!r}")
            return _completed(run, steps, event, now, default_watch_s, limits)
        case StepRetryScheduled():
            run = _known(run, f"a retry for task {event.task_id!r}")
            return _retry(run, steps, event, now, limits)
        case StepAbandoned():
            run = _known(run, f"an abandoned step of task {event.task_id!r}")
            return _abandoned(run, steps, event, now)
        case TaskCancelRequested():
            return _cancel(_known(run, f"cancel requested for task {event.task_id!r}"), event)
        case DeadlinePassed():
            return _deadline_passed(_known(run, f"a deadline of task {event.task_id!r}"), now)
        case _:
            assert_never(event)


def _known(run: Run | None, about: str) -> Run:
    if run is None:
        raise UnknownTask(f"{about}, which was never submitted here")
    return run


def _submitted(
    run: Run | None,
    task: TaskSubmitted,
    now: datetime,
    catalog: WorkflowCatalog,
    default_watch_s: float,
    limits: Limits,
) -> Decision:
    if run is not None and run.tenant != task.tenant:
        # Not a repeat: someone else's task. Its run stays as it is, and the answer
        # goes to the submitter's tenant only (a waiter of the run's tenant skips it).
        error = TaskError(
            type=TaskErrorType.TASK_ID_IN_USE,
            message=f"task_id {task.task_id!r} is in use by another tenant's task;"
            " submit under another task_id",
        )
        return (Reject(task, error),)
    if run is not None:
        return (Ignore("duplicate submission: a repeated task_id starts nothing"),)
    workflow = catalog.get(task.workflow, task.workflow_version)
    new = Run(
        task_id=task.task_id,
        workflow=task.workflow,
        workflow_version=workflow.version if workflow else 0,
        definition=workflow.model_dump(mode="json", by_alias=True) if workflow else {},
        status=RunStatus.RUNNING,
        tenant=task.tenant,
        subject=task.subject,
        priority=task.priority,
        metadata=task.metadata,
        input=task.input,
        deadline=aware(task.deadline),
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
        known = ", ".join(catalog.names)
        error = TaskError(
            type=TaskErrorType.UNKNOWN_WORKFLOW,
            message=f"no workflow named {wanted} (known: {known})",
        )
        return Start(new), Fail(error)
    why = too_large("the task's input", task.input)
    if why:
        return Start(new), Fail(TaskError(type=TOO_LARGE, message=why))
    return Start(new), Accept(workflow), advance(new, (), workflow, now, default_watch_s, limits)


def _completed(
    run: Run,
    steps: Sequence[Step],
    result: StepCompleted,
    now: datetime,
    default_watch_s: float,
    limits: Limits,
) -> Decision:
    step = _step(steps, result.step_id)
    reopen: tuple[Action, ...] = ()
    if (
        run.status == RunStatus.FAILED
        and (run.error or {}).get("step_id") == result.step_id
        and step is not None
        and step.status == StepStatus.ABANDONED
    ):
        # A replayed step that now succeeds reopens the task it failed.
        reopen = (Reopen(result.step_id, result.attempt),)
        run = replace(run, status=RunStatus.RUNNING, error=None, finished_at=None)
        step = replace(step, status=StepStatus.DISPATCHED)
    if run.status != RunStatus.RUNNING:
        return (
            Ignore(
                f"the task is {run.status}",
                HistoryKind.LATE_RESULT_IGNORED,
                step_id=result.step_id,
                attempt=result.attempt,
            ),
        )
    if step is None or step.status not in OPEN_STEP:
        return (Ignore(f"step {result.step_id} is not open: a duplicate or a settled step"),)
    usage = result.usage
    cost = run.cost_usd + usage.cost_usd
    tokens = run.tokens + usage.prompt_tokens + usage.completion_tokens
    settle = Settle(result, cost, tokens)
    over = budget_exceeded(cost, tokens, run.budget_cost_usd, run.budget_tokens)
    if over:
        error = TaskError(type=TaskErrorType.BUDGET_EXCEEDED, message=over, step_id=result.step_id)
        return *reopen, settle, Fail(error)
    done = replace(
        step,
        status=StepStatus.COMPLETED,
        output=result.output,
        usage=usage.model_dump(),
        duration_ms=result.duration_ms,
        attempts=result.attempt,
        finished_at=now,
        deadline_at=None,
    )
    after = [done if s.step_id == done.step_id else s for s in steps]
    run = replace(run, cost_usd=cost, tokens=tokens)
    workflow = Workflow.model_validate(run.definition)  # the version the run started on
    return *reopen, settle, advance(run, after, workflow, now, default_watch_s, limits)


def _retry(
    run: Run, steps: Sequence[Step], retry: StepRetryScheduled, now: datetime, limits: Limits
) -> Decision:
    if run.status != RunStatus.RUNNING:
        return (Ignore(f"a retry of step {retry.step_id}, but the task is {run.status}"),)
    step = _step(steps, retry.step_id)
    if step is None or step.status == StepStatus.COMPLETED:
        return (Ignore(f"a retry of step {retry.step_id}, which is not open"),)
    # Recovery has already scheduled this attempt, so failing the task here cannot
    # unsend it (its result is ignored as late); recovery's own caps are what stop
    # retries before they are scheduled. This still ends the task at the limit.
    over = dispatch_limit(dispatches(steps), max(retry.attempt - step.attempts, 0), limits)
    if over:
        error = TaskError(type=TaskErrorType.LIMIT_EXCEEDED, message=over, step_id=retry.step_id)
        return (Fail(error, close_steps=True),)
    due = aware(retry.due_at) or now
    deadline = due + timedelta(seconds=step.timeout_s) if step.timeout_s else None
    wait = max((due - now).total_seconds(), 0)
    return (Rewatch(retry, step.capability, deadline, wait),)


def _abandoned(
    run: Run, steps: Sequence[Step], abandoned: StepAbandoned, now: datetime
) -> Decision:
    if run.status != RunStatus.RUNNING:
        return (Ignore(f"step {abandoned.step_id} abandoned, but the task is {run.status}"),)
    step = _step(steps, abandoned.step_id)
    if step is None or step.status not in OPEN_STEP:
        return (Ignore(f"step {abandoned.step_id} abandoned, but it settled first"),)
    error_type, message = abandoned.error.type, abandoned.error.message
    if run.deadline is not None and now >= run.deadline and error_type == StepErrorType.TIMEOUT:
        # The step's timeout was the task's remaining time: say which limit it was.
        error_type = TaskErrorType.DEADLINE_EXCEEDED
        message = f"deadline {run.deadline.isoformat()} passed during step {abandoned.step_id}"
    error = TaskError(type=error_type, message=message, step_id=abandoned.step_id)
    return GiveUp(abandoned), Fail(error, dlq=abandoned.dlq)


def bound_tenant(
    bound: str | None, message: TaskSubmitted | TaskCancelRequested
) -> TaskSubmitted | TaskCancelRequested:
    """The message as the router takes it from a topic bound to tenant ``bound`` (None:
    the shared topic, whose writers are trusted with any tenant). One that names no
    tenant, or the contract's default (what a client that never set it sends), is the
    topic's; one that names another raises ``TenantMismatch``."""
    if bound is None or message.tenant == bound:
        return message
    if "tenant" not in message.model_fields_set or message.tenant == DEFAULT_TENANT:
        return message.model_copy(update={"tenant": bound})
    raise TenantMismatch(
        f"claims tenant {message.tenant!r} on tenant {bound!r}'s own topic;"
        f" a message there names {bound!r} or no tenant"
    )


def _cancel(run: Run, request: TaskCancelRequested) -> Decision:
    if request.tenant != run.tenant:
        why = f"cancel requested by tenant {request.tenant!r}, which does not own the task"
        return (Ignore(why, HistoryKind.CANCEL_REFUSED),)
    if run.status in TERMINAL_RUN:
        why = f"cancel requested but the task is already {run.status}"
        return (Ignore(why, HistoryKind.CANCEL_IGNORED),)
    return (Cancel(request.reason or "cancel requested"),)


def _deadline_passed(run: Run, now: datetime) -> Decision:
    if run.status != RunStatus.RUNNING or run.deadline is None or now < run.deadline:
        return (Ignore("not running past a deadline"),)
    message = f"deadline {run.deadline.isoformat()} passed"
    return (
        Fail(TaskError(type=TaskErrorType.DEADLINE_EXCEEDED, message=message), close_steps=True),
    )


def _step(steps: Sequence[Step], step_id: str) -> Step | None:
    return next((s for s in steps if s.step_id == step_id), None)


def advance(
    run: Run,
    steps: Sequence[Step],
    workflow: Workflow,
    now: datetime,
    default_watch_s: float,
    limits: Limits = DEFAULT_LIMITS,
) -> Advance:
    """Dispatch the steps that became runnable (as many as the fan-out limit leaves
    room for), or complete the task.

    Every input and route is worked out before anything is dispatched, so a
    template error fails the task without half of a fan-out already sent; so is
    the dispatch limit, so crossing it sends none of them."""
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
                return Fail(TaskError(type=TOO_LARGE, message=why))
            return Complete(output, spent(steps), tuple(summary(s) for s in steps))
        routed = []
        for step in runnable_steps(workflow, {s.step_id for s in steps}, set(completed)):
            current = step.id
            routed.append((step, choose_route(step, context), step_input(step, context)))
    except ExpressionError as exc:
        where = f"step {current}" if current else "workflow output"
        kind = TOO_LARGE if isinstance(exc, ResultTooLarge) else TaskErrorType.TEMPLATE_ERROR
        return Fail(TaskError(type=kind, message=f"{where}: {exc}", step_id=current))
    for step, _, data in routed:
        # Before anything is dispatched: a step whose input could never be sent
        # fails the task now, rather than leaving a fan-out half sent.
        why = too_large(f"step {step.id}'s input", data)
        if why:
            return Fail(TaskError(type=TOO_LARGE, message=why, step_id=step.id))
    # The rest stay not started: the next settled step's advance finds them runnable.
    routed = routed[: fanout_room(steps, limits.max_fanout)]
    over = dispatch_limit(dispatches(steps), len(routed), limits)
    if over:
        step_id = routed[0][0].id
        error = TaskError(type=TaskErrorType.LIMIT_EXCEEDED, message=over, step_id=step_id)
        return Fail(error, close_steps=True)
    return Dispatch(
        workflow,
        tuple(
            plan(run, workflow, step, route, data, now, default_watch_s)
            for step, route, data in routed
        ),
    )


def plan(
    run: Run,
    workflow: Workflow,
    step: StepDef,
    route: Route,
    data: dict[str, Any],
    now: datetime,
    default_watch_s: float,
) -> Planned:
    """The request for one step, and how long the watchdog waits for its result."""
    timeout = step_timeout(step.timeout, run.deadline, now)
    # Every dispatched step is watched, with a default when it names no timeout: a
    # lost request or result is then re-driven by recovery instead of waited on forever.
    watch = watch_timeout(step.timeout, default_watch_s, run.deadline, now)
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
    return Planned(step, route, request, watch)


def spent(steps: Sequence[Step]) -> Usage:
    """What the run's steps used, summed."""
    return sum((Usage.model_validate(s.usage or {}) for s in steps), Usage())


def summary(step: Step) -> StepSummary:
    return StepSummary(
        step_id=step.step_id,
        capability=step.capability,
        pool=step.pool,
        attempts=step.attempts,
        duration_ms=step.duration_ms or 0.0,
    )


def timed_out(step: Step) -> StepFailed:
    """The failure the watchdog reports for a step that outlived its watch."""
    request = StepRequested.model_validate(step.request).model_copy(
        update={"attempt": step.attempts, "pool": step.pool, "model": step.model}
    )
    return StepFailed.for_step(
        request,
        error=StepError(
            type=StepErrorType.TIMEOUT,
            error_class="retryable",
            message=f"no result within {step.timeout_s}s (router watchdog)",
        ),
        duration_ms=(step.timeout_s or 0) * 1000,
        attempt=step.attempts,
    )


# -- the parts -------------------------------------------------------------------------------


def runnable_steps(workflow: Workflow, started: set[str], completed: set[str]) -> list[StepDef]:
    """Steps not yet started whose every need has completed (fan-out happens here)."""
    return [s for s in workflow.steps if s.id not in started and set(s.needs) <= completed]


def dispatches(steps: Sequence[Step]) -> int:
    """Step attempts the run has sent so far: each step's first, retries, fallbacks."""
    return sum(s.attempts for s in steps)


def dispatch_limit(used: int, more: int, limits: Limits) -> str | None:
    """Why sending ``more`` step attempts after ``used`` crosses the limit, or None."""
    total = used + more
    if more <= 0 or total <= limits.max_step_dispatches:
        return None
    return (
        f"{total} step dispatches would exceed {MAX_STEP_DISPATCHES}"
        f" ({limits.max_step_dispatches}) for one task; {used} sent so far"
    )


def fanout_room(steps: Sequence[Step], max_fanout: int) -> int:
    """How many more of the run's steps may be in flight now: a failed step still
    counts, recovery may run it again."""
    return max(max_fanout - sum(1 for s in steps if s.status in OPEN_STEP), 0)


def template_context(
    task: Mapping[str, Any], task_input: Mapping[str, Any], outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """What templates and `when` rules can see: the input, finished steps, the task."""
    return {
        "input": task_input,
        "steps": {step_id: {"output": out} for step_id, out in outputs.items()},
        "task": task,
    }


def step_input(step: StepDef, context: Mapping[str, Any]) -> dict[str, Any]:
    """A step's input: its rendered ``with`` block, else the task's input."""
    if step.with_ is None:
        return dict(context["input"])
    rendered = render_json(step.with_, context)
    assert isinstance(rendered, dict)
    return rendered


def task_output(workflow: Workflow, context: Mapping[str, Any]) -> Any:
    """The workflow's ``output`` template, else the final step's output (or a
    mapping of them when several steps end the graph)."""
    if workflow.output is not None:
        return render_json(workflow.output, context)
    steps = context["steps"]
    finals = workflow.final_steps
    if len(finals) == 1:
        return steps[finals[0].id]["output"]
    return {s.id: steps[s.id]["output"] for s in finals}


def idempotency_key(task_id: str, step_id: str) -> str:
    """Stable across retries and replays of the same step of the same task."""
    return f"{task_id}/{step_id}"


def budget_exceeded(
    cost_usd: float, tokens: int, max_cost_usd: float | None, max_tokens: int | None
) -> str | None:
    """Why the task's budget is spent, or None."""
    if max_cost_usd is not None and cost_usd > max_cost_usd:
        return f"cost ${cost_usd:.4f} exceeds the budget of ${max_cost_usd:.4f}"
    if max_tokens is not None and tokens > max_tokens:
        return f"{tokens} tokens exceed the budget of {max_tokens}"
    return None


def step_timeout(
    step_timeout_s: float | None, deadline: datetime | None, now: datetime
) -> float | None:
    """A step may not outlive its task: its timeout is capped by the task's deadline."""
    remaining = (deadline - now).total_seconds() if deadline else None
    candidates = [t for t in (step_timeout_s, remaining) if t is not None]
    return max(min(candidates), 0.001) if candidates else None


def watch_timeout(
    step_timeout_s: float | None, default_s: float, deadline: datetime | None, now: datetime
) -> float:
    """How long the watchdog waits for a step's result: its own timeout, else the
    router's default, capped by the task's deadline. Every step gets one, so a step
    whose request or result is lost is re-driven instead of waited on for ever."""
    own = step_timeout_s or default_s
    remaining = (deadline - now).total_seconds() if deadline else own
    return max(min(own, remaining), 0.001)

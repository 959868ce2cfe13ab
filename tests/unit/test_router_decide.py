"""The router's decision, without a broker or a database: a run and its steps as
records, an event, a fixed time -> the actions. Each row of the table names the
state, the event and the decision's shape; the tests after it check the values
a shape leaves out (totals, the relabelled error, the watch, the request)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podium_contracts import (
    Budget,
    DlqLocation,
    HistoryKind,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepRetryScheduled,
    TaskCancelRequested,
    TaskSubmitted,
    UnknownTask,
    Usage,
)
from podium_router.decisions import (
    Accept,
    Cancel,
    Complete,
    DeadlinePassed,
    Decision,
    Dispatch,
    Fail,
    GiveUp,
    Ignore,
    Reopen,
    Rewatch,
    Settle,
    Start,
    Trigger,
    decide,
    timed_out,
)
from podium_router.records import Run, Step
from podium_router.state import RunStatus, StepStatus
from podium_router.workflows import Workflow, WorkflowCatalog

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DEFAULT_WATCH_S = 600.0

# a -> (b, c) -> d; c names a timeout and routes long inputs to the large pool
DIAMOND = Workflow.model_validate(
    {
        "name": "diamond",
        "version": 3,
        "steps": [
            {"id": "a", "uses": "echo", "with": {"text": "{{ input.text }}"}},
            {"id": "b", "uses": "echo", "needs": ["a"]},
            {
                "id": "c",
                "uses": "llm.chat",
                "needs": ["a"],
                "timeout": "30s",
                "route": [{"when": "len(input.text) > 5", "pool": "large"}],
            },
            {"id": "d", "uses": "echo", "needs": ["b", "c"]},
        ],
        "output": {"label": "{{ steps.d.output.label }}"},
    }
)
CATALOG = WorkflowCatalog([DIAMOND])


def run(status: RunStatus = RunStatus.RUNNING, **changes: Any) -> Run:
    return replace(
        Run(
            task_id="t1",
            workflow="diamond",
            workflow_version=3,
            definition=DIAMOND.model_dump(mode="json", by_alias=True),
            status=status,
            tenant="acme",
            subject=None,
            priority=0,
            metadata={},
            input={"text": "hello there"},
            deadline=None,
            budget_cost_usd=None,
            budget_tokens=None,
            cost_usd=0.0,
            tokens=0,
            accepted_at=NOW - timedelta(minutes=1),
        ),
        **changes,
    )


def step(step_id: str, status: StepStatus = StepStatus.DISPATCHED, **changes: Any) -> Step:
    done = status == StepStatus.COMPLETED
    return replace(
        Step(
            task_id="t1",
            step_id=step_id,
            capability="echo",
            pool="default",
            model=None,
            status=status,
            attempts=1,
            request={},
            timeout_s=30.0,
            deadline_at=None if done else NOW + timedelta(seconds=30),
            dispatched_at=NOW - timedelta(seconds=10),
            output={"label": step_id} if done else None,
            usage={"cost_usd": 0.01, "prompt_tokens": 5, "completion_tokens": 5} if done else None,
            duration_ms=3.0 if done else None,
        ),
        **changes,
    )


def result(step_id: str, attempt: int = 1, usage: Usage | None = None) -> StepCompleted:
    return StepCompleted(
        task_id="t1",
        step_id=step_id,
        capability="echo",
        pool="default",
        output={"label": step_id},
        attempt=attempt,
        duration_ms=2.0,
        usage=usage or Usage(),
    )


def abandoned(step_id: str = "b", error_type: str = "unavailable") -> StepAbandoned:
    return StepAbandoned(
        task_id="t1",
        step_id=step_id,
        attempts=3,
        error=StepError(type=error_type, message="down"),
        dlq=DlqLocation(topic="t.steps.default.v1.dlq", record_id="r1"),
    )


def retry(step_id: str = "c", due_in_s: float = 4.0) -> StepRetryScheduled:
    return StepRetryScheduled(
        task_id="t1",
        step_id=step_id,
        attempt=2,
        pool="backup",
        due_at=NOW + timedelta(seconds=due_in_s),
        error=StepError(type="timeout", message="slow"),
    )


def decide_now(run: Run | None, steps: list[Step], event: Trigger) -> Decision:
    return decide(run, steps, event, now=NOW, catalog=CATALOG, default_watch_s=DEFAULT_WATCH_S)


def shape(decision: Decision) -> list[tuple[Any, ...]]:
    """Each action by its name and the one thing that tells it apart."""
    out: list[tuple[Any, ...]] = []
    for action in decision:
        match action:
            case Dispatch(steps=planned):
                out.append(("Dispatch", [p.step.id for p in planned]))
            case Fail(error=error):
                out.append(("Fail", error.type))
            case Ignore(kind=kind):
                out.append(("Ignore", kind))
            case _:
                out.append((type(action).__name__,))
    return out


SUBMITTED = TaskSubmitted(
    task_id="t1", workflow="diamond", input={"text": "hello there"}, tenant="acme"
)
FIRST_DONE = [step("a", StepStatus.COMPLETED)]
A_B_C_DONE = [step(s, StepStatus.COMPLETED) for s in "abc"]

TABLE: list[tuple[str, Run | None, list[Step], Trigger, list[tuple[Any, ...]]]] = [
    (
        "a new task starts and dispatches its first step",
        None,
        [],
        SUBMITTED,
        [("Start",), ("Accept",), ("Dispatch", ["a"])],
    ),
    ("a repeated task_id starts nothing", run(), [], SUBMITTED, [("Ignore", None)]),
    (
        "an unknown workflow fails the task it stores",
        None,
        [],
        TaskSubmitted(task_id="t1", workflow="nope"),
        [("Start",), ("Fail", "unknown_workflow")],
    ),
    (
        "an input over the limit fails the task before it is accepted",
        None,
        [],
        TaskSubmitted(task_id="t1", workflow="diamond", input={"text": "x" * 2_000_000}),
        [("Start",), ("Fail", "too_large")],
    ),
    (
        "a template that reads a missing field fails the task, nothing dispatched",
        None,
        [],
        TaskSubmitted(task_id="t1", workflow="diamond", input={"other": 1}),
        [("Start",), ("Accept",), ("Fail", "template_error")],
    ),
    (
        "a result fans out to the steps it unblocked",
        run(),
        [step("a")],
        result("a"),
        [("Settle",), ("Dispatch", ["b", "c"])],
    ),
    (
        "a result while a sibling still runs dispatches nothing",
        run(),
        [*FIRST_DONE, step("b"), step("c")],
        result("b"),
        [("Settle",), ("Dispatch", [])],
    ),
    (
        "the last result completes the task",
        run(),
        [*A_B_C_DONE, step("d")],
        result("d"),
        [("Settle",), ("Complete",)],
    ),
    (
        "a result after the step timed out (failed, awaiting recovery) still counts",
        run(),
        [*FIRST_DONE, step("b", StepStatus.FAILED), step("c")],
        result("b", attempt=2),
        [("Settle",), ("Dispatch", [])],
    ),
    (
        "a duplicate result changes nothing",
        run(),
        [*FIRST_DONE, step("b", StepStatus.COMPLETED), step("c")],
        result("b"),
        [("Ignore", None)],
    ),
    (
        "a result over the token budget fails the task",
        run(budget_tokens=100, tokens=90),
        [step("a")],
        result("a", usage=Usage(prompt_tokens=10, completion_tokens=1)),
        [("Settle",), ("Fail", "budget_exceeded")],
    ),
    (
        "a late result for a cancelled task is recorded and ignored",
        run(RunStatus.CANCELLED),
        [step("a", StepStatus.CANCELLED)],
        result("a"),
        [("Ignore", HistoryKind.LATE_RESULT_IGNORED)],
    ),
    (
        "a replayed step that succeeds reopens the task it failed",
        run(RunStatus.FAILED, error={"type": "unavailable", "message": "down", "step_id": "b"}),
        [*FIRST_DONE, step("b", StepStatus.ABANDONED), step("c", StepStatus.COMPLETED)],
        result("b"),
        [("Reopen",), ("Settle",), ("Dispatch", ["d"])],
    ),
    (
        "a result for another step of a failed task does not reopen it",
        run(RunStatus.FAILED, error={"type": "unavailable", "message": "down", "step_id": "b"}),
        [*FIRST_DONE, step("b", StepStatus.ABANDONED), step("c")],
        result("c"),
        [("Ignore", HistoryKind.LATE_RESULT_IGNORED)],
    ),
    (
        "a retry is watched from its due time",
        run(),
        [*FIRST_DONE, step("b"), step("c", StepStatus.FAILED)],
        retry(),
        [("Rewatch",)],
    ),
    (
        "a retry of a completed step changes nothing",
        run(),
        [*FIRST_DONE, step("b"), step("c", StepStatus.COMPLETED)],
        retry(),
        [("Ignore", None)],
    ),
    (
        "a retry for a task that is over changes nothing",
        run(RunStatus.CANCELLED),
        [*FIRST_DONE, step("c", StepStatus.CANCELLED)],
        retry(),
        [("Ignore", None)],
    ),
    (
        "an abandoned step fails its task",
        run(),
        [*FIRST_DONE, step("b", StepStatus.FAILED), step("c")],
        abandoned(),
        [("GiveUp",), ("Fail", "unavailable")],
    ),
    (
        "an abandoned step that completed first changes nothing",
        run(),
        [*FIRST_DONE, step("b", StepStatus.COMPLETED), step("c")],
        abandoned(),
        [("Ignore", None)],
    ),
    (
        "a step timeout once the deadline passed is the deadline's",
        run(deadline=NOW - timedelta(seconds=1)),
        [*FIRST_DONE, step("b", StepStatus.FAILED)],
        abandoned(error_type="timeout"),
        [("GiveUp",), ("Fail", "deadline_exceeded")],
    ),
    (
        "a step timeout before the deadline stays a timeout",
        run(deadline=NOW + timedelta(seconds=1)),
        [*FIRST_DONE, step("b", StepStatus.FAILED)],
        abandoned(error_type="timeout"),
        [("GiveUp",), ("Fail", "timeout")],
    ),
    (
        "a cancel ends a running task",
        run(),
        [step("a")],
        TaskCancelRequested(task_id="t1", tenant="acme"),
        [("Cancel",)],
    ),
    (
        "a cancel of a finished task is recorded and ignored",
        run(RunStatus.COMPLETED),
        A_B_C_DONE,
        TaskCancelRequested(task_id="t1", tenant="acme"),
        [("Ignore", HistoryKind.CANCEL_IGNORED)],
    ),
    (
        "a run past its deadline fails and closes its steps",
        run(deadline=NOW - timedelta(seconds=1)),
        [step("a")],
        DeadlinePassed("t1"),
        [("Fail", "deadline_exceeded")],
    ),
    (
        "a run whose deadline has not passed is left alone",
        run(deadline=NOW + timedelta(seconds=1)),
        [step("a")],
        DeadlinePassed("t1"),
        [("Ignore", None)],
    ),
]


@pytest.mark.parametrize(
    ("run_", "steps", "event", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_the_decision_table(
    run_: Run | None, steps: list[Step], event: Trigger, expected: list[tuple[Any, ...]]
) -> None:
    assert shape(decide_now(run_, steps, event)) == expected


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (result("a"), "a result for task 't1'"),
        (retry(), "a retry for task 't1'"),
        (abandoned(), "an abandoned step of task 't1'"),
        (TaskCancelRequested(task_id="t1", tenant="acme"), "cancel requested for task 't1'"),
    ],
)
def test_an_event_about_a_task_never_submitted_is_a_contract_error(
    event: Trigger, message: str
) -> None:
    with pytest.raises(UnknownTask, match=message):
        decide_now(None, [], event)


def test_a_new_run_is_the_submission_on_the_newest_version_at_the_given_time() -> None:
    task = SUBMITTED.model_copy(
        update={"tenant": "acme", "priority": 7, "budget": Budget(max_cost_usd=1.5)}
    )
    start, accept, dispatch = decide_now(None, [], task)
    assert isinstance(start, Start) and isinstance(accept, Accept)
    assert isinstance(dispatch, Dispatch)
    new = start.run
    assert (new.task_id, new.workflow_version, new.status, new.accepted_at) == (
        "t1",
        3,
        RunStatus.RUNNING,
        NOW,
    )
    assert (new.tenant, new.priority, new.budget_cost_usd, new.cost_usd) == ("acme", 7, 1.5, 0.0)
    assert accept.workflow is DIAMOND
    [first] = dispatch.steps
    assert first.request.input == {"text": "hello there"}
    assert first.request.idempotency_key == "t1/a" and first.request.workflow == "diamond"
    assert first.request.timeout_s is None  # the executor keeps its own default
    assert first.watch_s == DEFAULT_WATCH_S  # but the router still watches it


def test_a_step_is_routed_and_its_timeout_capped_by_the_deadline() -> None:
    ten_s = run(deadline=NOW + timedelta(seconds=10))
    [_, dispatch] = decide_now(ten_s, [step("a")], result("a"))
    assert isinstance(dispatch, Dispatch)
    planned = {p.step.id: p for p in dispatch.steps}
    assert planned["c"].route.pool == "large" and planned["c"].route.rule == 1
    assert planned["c"].request.timeout_s == 10.0 and planned["c"].watch_s == 10.0
    assert planned["b"].request.timeout_s == 10.0 and planned["b"].watch_s == 10.0
    [_, short] = decide_now(run(input={"text": "hi"}), [step("a")], result("a"))
    assert isinstance(short, Dispatch)
    assert {p.step.id: p.route.pool for p in short.steps} == {"b": "default", "c": "default"}
    assert {p.step.id: p.watch_s for p in short.steps} == {"b": DEFAULT_WATCH_S, "c": 30.0}


def test_the_budget_is_the_sum_of_what_the_run_spent_and_this_result() -> None:
    spent = run(cost_usd=0.5, tokens=40, budget_cost_usd=0.6)
    usage = Usage(cost_usd=0.05, prompt_tokens=3, completion_tokens=2)
    settle, dispatch = decide_now(spent, [step("a")], result("a", usage=usage))
    assert settle == Settle(result("a", usage=usage), 0.55, 45)
    assert isinstance(dispatch, Dispatch)
    settle, fail = decide_now(spent, [step("a")], result("a", usage=Usage(cost_usd=0.2)))
    assert isinstance(settle, Settle) and settle.cost_usd == pytest.approx(0.7)
    assert isinstance(fail, Fail) and fail.error.step_id == "a"
    assert fail.error.message == "cost $0.7000 exceeds the budget of $0.6000"


def test_completion_sums_usage_and_names_every_step() -> None:
    usage = Usage(cost_usd=0.02, prompt_tokens=1, completion_tokens=1)
    _, complete = decide_now(run(), [*A_B_C_DONE, step("d")], result("d", usage=usage))
    assert isinstance(complete, Complete)
    assert complete.output == {"label": "d"}
    assert complete.usage == Usage(cost_usd=0.05, prompt_tokens=16, completion_tokens=16)
    assert [(s.step_id, s.duration_ms) for s in complete.steps] == [
        ("a", 3.0),
        ("b", 3.0),
        ("c", 3.0),
        ("d", 2.0),
    ]


def test_an_abandoned_step_past_the_deadline_names_the_deadline_and_the_dlq_record() -> None:
    deadline = NOW - timedelta(seconds=1)
    give_up, fail = decide_now(
        run(deadline=deadline), [step("b", StepStatus.FAILED)], abandoned(error_type="timeout")
    )
    assert give_up == GiveUp(abandoned(error_type="timeout"))
    assert isinstance(fail, Fail) and fail.dlq == DlqLocation(
        topic="t.steps.default.v1.dlq", record_id="r1"
    )
    assert fail.error.message == f"deadline {deadline.isoformat()} passed during step b"
    assert fail.error.step_id == "b" and not fail.close_steps


def test_a_retry_is_watched_for_the_step_timeout_from_its_due_time() -> None:
    [rewatch] = decide_now(run(), [step("c", StepStatus.FAILED)], retry(due_in_s=4.0))
    assert rewatch == Rewatch(retry(), "echo", NOW + timedelta(seconds=34), 4.0)
    [past_due] = decide_now(run(), [step("c", StepStatus.FAILED)], retry(due_in_s=-2.0))
    assert isinstance(past_due, Rewatch) and past_due.wait_s == 0
    [unwatched] = decide_now(run(), [step("c", timeout_s=None)], retry())
    assert isinstance(unwatched, Rewatch) and unwatched.deadline_at is None


def test_reopening_and_ignoring_say_what_and_why() -> None:
    failed = run(RunStatus.FAILED, error={"type": "x", "message": "y", "step_id": "b"})
    reopen, *_ = decide_now(failed, [step("b", StepStatus.ABANDONED)], result("b", attempt=4))
    assert reopen == Reopen("b", 4)
    [late] = decide_now(run(RunStatus.CANCELLED), [], result("a", attempt=2))
    assert late == Ignore("the task is cancelled", HistoryKind.LATE_RESULT_IGNORED, "a", 2)
    [cancel] = decide_now(
        run(), [], TaskCancelRequested(task_id="t1", reason="user left", tenant="acme")
    )
    assert cancel == Cancel("user left")
    [default] = decide_now(run(), [], TaskCancelRequested(task_id="t1", tenant="acme"))
    assert default == Cancel("cancel requested")


def test_the_deadline_fails_the_run_with_the_time_it_passed() -> None:
    deadline = NOW - timedelta(seconds=1)
    [fail] = decide_now(run(deadline=deadline), [], DeadlinePassed("t1"))
    assert isinstance(fail, Fail) and fail.close_steps
    assert fail.error.message == f"deadline {deadline.isoformat()} passed"


def test_a_step_that_outlived_its_watch_goes_to_recovery_as_a_retryable_timeout() -> None:
    [dispatch] = [a for a in decide_now(None, [], SUBMITTED) if isinstance(a, Dispatch)]
    request = dispatch.steps[0].request.model_dump(mode="json")
    overdue = step("a", attempts=2, pool="backup", model="m2", request=request, timeout_s=45.0)
    failure = timed_out(overdue)
    assert (failure.error.type, failure.error.error_class) == ("timeout", "retryable")
    assert failure.error.message == "no result within 45.0s (router watchdog)"
    assert failure.duration_ms == 45_000
    assert (failure.request.attempt, failure.request.pool, failure.request.model) == (
        2,
        "backup",
        "m2",
    )


def test_the_records_are_their_tables_column_for_column() -> None:
    from dataclasses import fields

    from podium_router.state import run_steps, runs

    assert {f.name for f in fields(Run)} == set(runs.c.keys())
    assert {f.name for f in fields(Step)} == set(run_steps.c.keys())

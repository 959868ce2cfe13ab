"""The run state machine against a real SQLite database: routing, data flow,
limits, cancellation, the watchdog and the history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from podium_contracts import (
    Budget,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    TaskAccepted,
    TaskCancelRequested,
    TaskHistoryRecorded,
    TaskSubmitted,
    Usage,
    decode,
)
from podium_router.decisions import watch_timeout
from podium_router.service import Router
from podium_router.state import history, metadata
from podium_router.workflows import Workflow, WorkflowCatalog, WorkflowError, load_file
from podium_shared import Topics, UnitOfWork, make_engine

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the router's clock in these tests: it stands still

TRIAGE = {
    "name": "ticket-triage",
    "version": 1,
    "steps": [
        {
            "id": "history",
            "uses": "memory.recall",
            "with": {"query": "{{ input.text }}", "limit": 5},
        },
        {"id": "sentiment", "uses": "echo", "with": {"text": "{{ input.text }}"}},
        {
            "id": "classify",
            "uses": "llm.chat",
            "needs": ["history", "sentiment"],
            "with": {
                "text": "{{ input.text }}",
                "context": "{{ steps.history.output }}",
                "mood": "{{ steps.sentiment.output.text }}",
            },
            "route": [
                {"when": "len(input.text) > 20", "pool": "large", "model": "big-model"},
                {"pool": "default", "model": "small-model"},
            ],
            "timeout": "30s",
            "retry": {"max_attempts": 4, "backoff": "exponential", "initial": "1s", "max": "30s"},
            "fallback": {"pool": "backup", "after_attempts": 2},
        },
    ],
    "output": {
        "label": "{{ steps.classify.output.label }}",
        "n": "{{ len(steps.history.output) }}",
    },
}


class Harness:
    made: ClassVar[list[Harness]] = []

    def __init__(
        self, database_url: str, *workflows: dict[str, Any], step_timeout_s: float = 600.0
    ) -> None:
        self.engine = make_engine(database_url, metadata)
        Harness.made.append(self)
        self.recorded: list[tuple[str, TaskHistoryRecorded]] = []
        self.router = Router(
            WorkflowCatalog([Workflow.model_validate(w) for w in workflows]),
            Topics("t"),
            step_timeout_s=step_timeout_s,
            clock=lambda: T0,
        )

    def run(self, fn: Any, *args: Any) -> list[tuple[str, Any]]:
        with self.engine.begin() as conn:
            uow = UnitOfWork(conn, source="router")
            fn(*args, uow) if args else fn(uow)
            sent = list(uow.pending)
        # The history entries the router publishes beside its messages are kept apart
        # (``recorded``): the tests here are about the messages that drive the work.
        out = []
        for m in sent:
            payload = decode(m.value, m.headers).payload
            if isinstance(payload, TaskHistoryRecorded):
                self.recorded.append((m.topic, payload))
            else:
                out.append((m.topic, payload))
        return out

    def close(self) -> None:
        self.engine.dispose()

    def events(self, task_id: str) -> list[str]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(history.c.event)
                .where(history.c.task_id == task_id)
                .order_by(history.c.id)
            )
            return [r[0] for r in rows]


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    while Harness.made:
        Harness.made.pop().engine.dispose()


def done(
    task: str, step: str, output: Any, pool: str = "default", usage: Usage | None = None
) -> StepCompleted:
    return StepCompleted(
        task_id=task,
        step_id=step,
        capability="x",
        pool=pool,
        output=output,
        attempt=1,
        duration_ms=2.0,
        usage=usage or Usage(),
    )


def test_routes_data_flow_and_output_template(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    out = h.run(
        h.router.accept_task,
        TaskSubmitted(
            task_id="t1",
            workflow="ticket-triage",
            input={"text": "my invoice is wrong, please help"},
        ),
    )
    sent = {p.step_id: (topic, p) for topic, p in out if isinstance(p, StepRequested)}
    assert sent["history"][0] == "t.steps.memory.v1"
    assert sent["history"][1].input == {"query": "my invoice is wrong, please help", "limit": 5}
    assert sent["sentiment"][1].input == {"text": "my invoice is wrong, please help"}

    assert h.run(h.router.step_completed, done("t1", "history", [{"text": "old"}], "memory")) == []
    [(topic, classify)] = h.run(h.router.step_completed, done("t1", "sentiment", {"text": "sad"}))
    assert topic == "t.steps.large.v1" and classify.model == "big-model"
    assert classify.input == {
        "text": "my invoice is wrong, please help",
        "context": [{"text": "old"}],
        "mood": "sad",
    }
    assert classify.timeout_s == 30.0
    assert classify.retry.max_attempts == 4 and classify.fallback.pool == "backup"
    [(_, completed)] = h.run(
        h.router.step_completed, done("t1", "classify", {"label": "billing"}, "large")
    )
    assert completed.output == {"label": "billing", "n": 1}
    assert h.events("t1") == [
        "accepted",
        "step_dispatched",
        "step_dispatched",
        "step_completed",
        "step_completed",
        "step_dispatched",
        "step_completed",
        "completed",
    ]


def test_every_history_entry_is_published_with_the_row_and_the_plan_with_the_acceptance(
    database_url: str,
) -> None:
    """What the router writes to its history it publishes in the same transaction, on
    task-events keyed by the task (so readers that may not open its database, the api,
    learn the story in order); TaskAccepted carries the plan, each step with its needs."""
    h = Harness(database_url, TRIAGE)
    task = TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "short"})
    out = h.run(h.router.accept_task, task)
    (accepted,) = [p for _, p in out if isinstance(p, TaskAccepted)]
    assert [(s.step_id, s.depends_on) for s in accepted.steps] == [
        ("history", []),
        ("sentiment", []),
        ("classify", ["history", "sentiment"]),
    ]
    h.run(h.router.step_completed, done("t1", "history", [], "memory"))
    h.run(h.router.step_completed, done("t1", "sentiment", {"text": "ok"}))
    h.run(h.router.step_completed, done("t1", "classify", {"label": "x"}))
    with h.engine.connect() as c:
        rows = c.execute(
            sa.select(history).where(history.c.task_id == "t1").order_by(history.c.id)
        ).all()
    assert {topic for topic, _ in h.recorded} == {"t.task-events.v1"}
    published = [
        (e.kind, e.step_id, e.attempt, e.pool, e.capability, e.model, e.cause, e.next)
        for _, e in h.recorded
    ]
    assert published == [
        (r.event, r.step_id, r.attempt, r.pool, r.capability, r.model, r.cause, r.next)
        for r in rows
    ]
    assert published[0][0] == "accepted" and published[-1][0] == "completed"
    dispatched = next(e for _, e in h.recorded if e.kind == "step_dispatched")
    assert dispatched.next.startswith("waiting for") and dispatched.cause


def test_second_rule_matches_short_input(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "short"}),
    )
    h.run(h.router.step_completed, done("t1", "history", [], "memory"))
    [(topic, req)] = h.run(h.router.step_completed, done("t1", "sentiment", {"text": "ok"}))
    assert topic == "t.steps.default.v1" and req.model == "small-model"


def test_missing_template_field_fails_the_task_not_the_router(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    out = h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"other": 1}),
    )
    assert len(out) == 2  # TaskAccepted and TaskFailed: no step was dispatched
    failed = out[-1][1]
    assert failed.error.type == "template_error" and "input.text" in failed.error.message
    assert failed.error.step_id == "history"


def test_budget_overrun_stops_dispatch(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    h.run(
        h.router.accept_task,
        TaskSubmitted(
            task_id="t1",
            workflow="ticket-triage",
            input={"text": "x"},
            budget=Budget(max_tokens=100),
        ),
    )
    h.run(h.router.step_completed, done("t1", "history", [], "memory"))
    out = h.run(
        h.router.step_completed,
        done("t1", "sentiment", {"text": "x"}, usage=Usage(prompt_tokens=90, completion_tokens=20)),
    )
    [(topic, failed)] = out
    assert topic == "t.task-events.v1" and failed.error.type == "budget_exceeded"
    assert "110 tokens exceed the budget of 100" in failed.error.message


def test_cost_budget(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    h.run(
        h.router.accept_task,
        TaskSubmitted(
            task_id="t1",
            workflow="ticket-triage",
            input={"text": "x"},
            budget=Budget(max_cost_usd=0.01),
        ),
    )
    [(_, failed)] = h.run(
        h.router.step_completed, done("t1", "history", [], "memory", usage=Usage(cost_usd=0.02))
    )
    assert failed.error.type == "budget_exceeded" and "$0.0200" in failed.error.message


def test_watchdog_hands_overdue_steps_to_recovery_and_fails_late_tasks(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    now = T0
    h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "x"}),
    )
    h.run(h.router.step_completed, done("t1", "history", [], "memory"))
    h.run(h.router.step_completed, done("t1", "sentiment", {"text": "x"}))
    assert h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=29))) == []
    [(topic, failure)] = h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=31)))
    assert topic == "t.step-failures.v1" and isinstance(failure, StepFailed)
    assert failure.error.type == "timeout" and failure.error.error_class == "retryable"
    assert failure.request.step_id == "classify" and failure.request.retry is not None
    assert (
        h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=60))) == []
    )  # once, not every tick

    # recovery retries: the router watches the new attempt from its due time
    h.run(
        h.router.retry_scheduled,
        StepRetryScheduled(
            task_id="t1",
            step_id="classify",
            attempt=2,
            pool="backup",
            due_at=now + timedelta(seconds=40),
            error=failure.error,
        ),
    )
    assert h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=65))) == []
    [(_, again)] = h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=71)))
    assert again.attempt == 2 and again.pool == "backup"

    h.run(
        h.router.accept_task,
        TaskSubmitted(
            task_id="t2",
            workflow="ticket-triage",
            input={"text": "x"},
            deadline=now + timedelta(seconds=5),
        ),
    )
    out = h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=6)))
    failed = [p for _, p in out if type(p).__name__ == "TaskFailed"]
    assert [f.error.type for f in failed] == ["deadline_exceeded"]


def test_step_timeout_is_capped_by_the_task_deadline(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    out = h.run(
        h.router.accept_task,
        TaskSubmitted(
            task_id="t1",
            workflow="ticket-triage",
            input={"text": "x"},
            deadline=T0 + timedelta(seconds=3),
        ),
    )
    steps = [p for _, p in out if isinstance(p, StepRequested)]
    assert [s.timeout_s for s in steps] == [3.0, 3.0]


def test_a_step_without_a_timeout_is_watched_for_the_default_and_re_driven(
    database_url: str,
) -> None:
    h = Harness(database_url, TRIAGE, step_timeout_s=120)
    now = T0
    # `history` and `sentiment` name no timeout; before, nothing watched them at all
    sent = h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "x"}),
    )
    assert {p.step_id: p.timeout_s for _, p in sent if isinstance(p, StepRequested)} == {
        "history": None,  # the executor keeps its own default; only the router watches
        "sentiment": None,
    }
    assert h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=119))) == []
    out = h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=121)))
    assert sorted((p.step_id, p.error.type) for _, p in out) == [
        ("history", "timeout"),
        ("sentiment", "timeout"),
    ]
    assert all("no result within 120.0s" in p.error.message for _, p in out)
    h.run(
        h.router.retry_scheduled,
        StepRetryScheduled(
            task_id="t1",
            step_id="history",
            attempt=2,
            pool="memory",
            due_at=now + timedelta(seconds=122),
            error=out[0][1].error,
        ),
    )
    assert h.events("t1") == [
        "accepted",
        "step_dispatched",
        "step_dispatched",
        "step_timed_out",
        "step_timed_out",
        "retry_scheduled",
    ]
    # the new attempt is watched as well
    [(_, again)] = h.run(lambda uow: h.router.watchdog(uow, now + timedelta(seconds=243)))
    assert again.step_id == "history" and again.attempt == 2


def test_the_watch_is_the_step_timeout_else_the_default_capped_by_the_deadline() -> None:
    now = T0
    assert watch_timeout(None, 600, None, now) == 600
    assert watch_timeout(30, 600, None, now) == 30
    assert watch_timeout(7200, 600, None, now) == 7200  # a step's own timeout wins
    assert watch_timeout(None, 600, now + timedelta(seconds=5), now) == 5
    assert watch_timeout(None, 600, now - timedelta(seconds=5), now) == 0.001
    # a deadline at the end of time is no timeout: the default applies
    end = datetime.max.replace(tzinfo=UTC)
    assert watch_timeout(None, 600, end, now) == 600


def test_abandoned_step_fails_the_task_with_the_dlq_record(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "x"}),
    )
    from podium_contracts import DlqLocation

    [(_, failed)] = h.run(
        h.router.step_abandoned,
        StepAbandoned(
            task_id="t1",
            step_id="history",
            attempts=3,
            error=StepError(type="unavailable", message="down", error_class="retryable"),
            dlq=DlqLocation(topic="t.steps.memory.v1.dlq", record_id="r1"),
        ),
    )
    assert failed.error.step_id == "history" and failed.dlq.record_id == "r1"
    # a late result for the other step changes nothing
    assert h.run(h.router.step_completed, done("t1", "sentiment", {"text": "x"})) == []
    assert h.events("t1")[-2:] == ["failed", "late_result_ignored"]


def test_cancel_stops_dispatch_and_ignores_late_results(database_url: str) -> None:
    h = Harness(database_url, TRIAGE)
    h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "x"}),
    )
    [(topic, cancelled)] = h.run(
        h.router.cancel_task, TaskCancelRequested(task_id="t1", reason="user left")
    )
    assert topic == "t.task-events.v1" and cancelled.reason == "user left"
    assert h.run(h.router.step_completed, done("t1", "history", [], "memory")) == []
    assert h.run(h.router.step_completed, done("t1", "sentiment", {"text": "x"})) == []
    assert h.run(h.router.cancel_task, TaskCancelRequested(task_id="t1")) == []
    assert h.run(lambda uow: h.router.watchdog(uow, T0 + timedelta(hours=1))) == []


def test_a_running_task_finishes_on_the_version_it_started_with(database_url: str) -> None:
    v1 = {"name": "w", "version": 1, "steps": [{"id": "a", "uses": "echo"}]}
    v2 = {
        "name": "w",
        "version": 2,
        "steps": [{"id": "a", "uses": "echo"}, {"id": "b", "uses": "echo", "needs": ["a"]}],
    }
    h = Harness(database_url, v1)
    h.run(h.router.accept_task, TaskSubmitted(task_id="old", workflow="w"))
    # the router restarts with v2 loaded beside v1
    h.router = Router(
        WorkflowCatalog([Workflow.model_validate(v1), Workflow.model_validate(v2)]),
        Topics("t"),
        clock=lambda: T0,
    )
    [(_, completed)] = h.run(h.router.step_completed, done("old", "a", {"ok": 1}))
    assert type(completed).__name__ == "TaskCompleted"
    out = h.run(h.router.accept_task, TaskSubmitted(task_id="new", workflow="w"))
    assert out[0][1].workflow_version == 2
    out = h.run(
        h.router.accept_task, TaskSubmitted(task_id="pinned", workflow="w", workflow_version=1)
    )
    assert out[0][1].workflow_version == 1
    [(_, missing)] = h.run(
        h.router.accept_task, TaskSubmitted(task_id="v9", workflow="w", workflow_version=9)
    )
    assert "version 9" in missing.error.message


def test_load_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nsteps:\n  - id: a\n    uses: echo\n    timeout: soon\n"
        "  - id: b\n    uses: echo\n    route:\n      - when: \"__import__('os')\"\n"
    )
    with pytest.raises(WorkflowError) as err:
        load_file(path)
    message = str(err.value)
    assert str(path) in message
    assert "line 5: steps.0.timeout" in message and "not a duration" in message
    assert "line 9: steps.1.route.0.when" in message and "only these functions" in message


def test_example_workflows_load() -> None:
    repo = Path(__file__).resolve().parents[2]
    catalog = WorkflowCatalog.load(str(repo / "workflows"))
    assert {"hello", "ticket-triage"} <= set(catalog.names)


def test_a_replayed_step_that_succeeds_reopens_its_failed_task(database_url: str) -> None:
    from podium_contracts import DlqLocation

    h = Harness(database_url, TRIAGE)
    h.run(
        h.router.accept_task,
        TaskSubmitted(task_id="t1", workflow="ticket-triage", input={"text": "x"}),
    )
    h.run(h.router.step_completed, done("t1", "sentiment", {"text": "x"}))
    h.run(
        h.router.step_abandoned,
        StepAbandoned(
            task_id="t1",
            step_id="history",
            attempts=3,
            error=StepError(type="unavailable", message="down", error_class="retryable"),
            dlq=DlqLocation(topic="t.steps.memory.v1.dlq", record_id="r1"),
        ),
    )
    # after the fix, the DLQ record is replayed and the step succeeds
    [(topic, classify)] = h.run(h.router.step_completed, done("t1", "history", [], "memory"))
    assert topic == "t.steps.default.v1" and classify.step_id == "classify"
    [(_, completed)] = h.run(h.router.step_completed, done("t1", "classify", {"label": "bug"}))
    assert type(completed).__name__ == "TaskCompleted"
    assert "reopened" in h.events("t1")
    # a second replay of the same record changes nothing
    assert h.run(h.router.step_completed, done("t1", "history", [], "memory")) == []

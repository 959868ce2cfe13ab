"""The router's decisions and use cases, against a real SQLite database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from podium_contracts import (
    StepAbandoned,
    StepCompleted,
    StepError,
    TaskHistoryRecorded,
    TaskSubmitted,
    decode,
)
from podium_router.decisions import runnable_steps, task_output, template_context
from podium_router.service import Router
from podium_router.state import metadata
from podium_router.workflows import Workflow, WorkflowCatalog, WorkflowError, load_file
from podium_shared import Topics, UnitOfWork, make_engine

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]

DIAMOND = Workflow.model_validate(
    {
        "name": "diamond",
        "steps": [
            {"id": "a", "uses": "echo"},
            {"id": "b", "uses": "echo", "needs": ["a"]},
            {"id": "c", "uses": "memory.recall", "needs": ["a"]},
            {"id": "d", "uses": "echo", "needs": ["b", "c"]},
        ],
    }
)


def test_runnable_steps_fan_out_and_in() -> None:
    assert [s.id for s in runnable_steps(DIAMOND, set(), set())] == ["a"]
    assert [s.id for s in runnable_steps(DIAMOND, {"a"}, {"a"})] == ["b", "c"]
    assert [s.id for s in runnable_steps(DIAMOND, {"a", "b", "c"}, {"a", "b"})] == []
    assert [s.id for s in runnable_steps(DIAMOND, {"a", "b", "c"}, {"a", "b", "c"})] == ["d"]
    context = template_context({}, {}, {"a": 1, "b": 2, "c": 3, "d": 4})
    assert task_output(DIAMOND, context) == 4


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: x\nsteps: []\n", "steps"),
        ("name: x\nsteps:\n  - {id: a, uses: echo, needs: [zz]}\n", "unknown steps ['zz']"),
        (
            "name: x\nsteps:\n  - {id: a, uses: echo, needs: [b]}\n"
            "  - {id: b, uses: echo, needs: [a]}\n",
            "cycle",
        ),
        ("name: x\nsteps:\n  - {id: a, uses: echo, colour: red}\n", "steps.0.colour"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_workflow_files_are_refused_naming_file_and_field(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(WorkflowError) as err:
        load_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_shipped_workflows_load() -> None:
    catalog = WorkflowCatalog.load(str(REPO / "workflows"))
    assert "hello" in catalog.names


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.engine = make_engine(f"sqlite:///{tmp_path / 'router.db'}", metadata)
        self.topics = Topics("t")
        self.router = Router(WorkflowCatalog([DIAMOND]), self.topics)
        self.recorded: list[tuple[str, TaskHistoryRecorded]] = []

    def run(self, fn: Any, message: Any) -> list[tuple[str, Any]]:
        with self.engine.begin() as conn:
            uow = UnitOfWork(conn, source="router")
            fn(message, uow)
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


def test_a_task_runs_its_dag_and_completes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    out = h.run(
        h.router.accept_task, TaskSubmitted(task_id="t1", workflow="diamond", input={"q": 1})
    )
    assert [(t, type(p).__name__) for t, p in out] == [
        ("t.task-events.v1", "TaskAccepted"),
        ("t.steps.default.v1", "StepRequested"),
    ]
    assert out[1][1].idempotency_key == "t1/a" and out[1][1].input == {"q": 1}

    def done(step: str, pool: str = "default") -> StepCompleted:
        return StepCompleted(
            task_id="t1",
            step_id=step,
            capability="echo",
            pool=pool,
            output={step: True},
            attempt=1,
            duration_ms=1.0,
        )

    out = h.run(h.router.step_completed, done("a"))
    assert [(t, p.step_id) for t, p in out] == [
        ("t.steps.default.v1", "b"),
        ("t.steps.memory.v1", "c"),
    ]
    assert h.run(h.router.step_completed, done("b")) == []
    assert h.run(h.router.step_completed, done("b")) == []  # a duplicate result changes nothing
    out = h.run(h.router.step_completed, done("c", "memory"))
    assert [p.step_id for _, p in out] == ["d"]
    out = h.run(h.router.step_completed, done("d"))
    [(topic, completed)] = out
    assert topic == "t.task-events.v1" and type(completed).__name__ == "TaskCompleted"
    assert completed.output == {"d": True}
    assert sorted(s.step_id for s in completed.steps) == ["a", "b", "c", "d"]


def test_a_duplicate_submission_starts_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    task = TaskSubmitted(task_id="t1", workflow="diamond")
    assert len(h.run(h.router.accept_task, task)) == 2
    assert h.run(h.router.accept_task, task) == []


def test_unknown_workflow_and_abandoned_step_fail_the_task(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    [(_, failed)] = h.run(h.router.accept_task, TaskSubmitted(task_id="t0", workflow="nope"))
    assert failed.error.type == "unknown_workflow" and "diamond" in failed.error.message

    h.run(h.router.accept_task, TaskSubmitted(task_id="t1", workflow="diamond"))
    [(_, failed)] = h.run(
        h.router.step_abandoned,
        StepAbandoned(
            task_id="t1",
            step_id="a",
            attempts=1,
            error=StepError(type="fatal_thing", message="no"),
        ),
    )
    assert failed.error.step_id == "a" and failed.error.type == "fatal_thing"
    with h.engine.connect() as c:
        status = c.execute(sa.text("select status from runs where task_id='t1'")).scalar()
    assert status == "failed"
    assert orjson.dumps(failed.model_dump(mode="json"))


def test_the_router_declares_every_pool_its_workflows_can_route_to() -> None:
    from podium_router.routing import pools_of

    catalog = WorkflowCatalog.load(f"{REPO / 'workflows'}:{REPO / 'tests' / 'workflows'}")
    pools = pools_of(catalog.all())
    # a step's pool (work, solo), a rule's (large), a fallback's (backup), the families'
    assert {"default", "memory", "work", "solo", "large", "backup"} <= pools
    assert pools_of([]) == {"default", "memory"}

"""Tenants are one namespace of task ids, not a key into each other's tasks: a
submission under another tenant's task_id is rejected to its submitter, a cancel
from another tenant is refused and recorded, and a client hands back only the
outcomes of its own tenant. Decisions as pure functions, the use cases on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from podium.client import belongs
from podium_contracts import (
    HistoryKind,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskErrorType,
    TaskRejected,
    TaskSubmitted,
)
from podium_router.decisions import Cancel, Ignore, Reject, decide
from podium_router.rejections import refused_submission
from podium_router.state import runs
from tests.unit.test_router_decide import CATALOG, NOW, run
from tests.unit.test_router_runs import Harness

pytestmark = pytest.mark.unit

ECHO = {"name": "echo-one", "steps": [{"id": "a", "uses": "echo"}]}


def decide_now(event: Any, **run_changes: Any) -> tuple[Any, ...]:
    return decide(run(**run_changes), [], event, now=NOW, catalog=CATALOG, default_watch_s=600.0)


# --- decisions --------------------------------------------------------------------------------


def test_another_tenants_task_id_is_rejected_to_the_submitter_and_nothing_else() -> None:
    theirs = TaskSubmitted(task_id="t1", workflow="diamond", tenant="globex")
    [reject] = decide_now(theirs)  # the run is acme's
    assert isinstance(reject, Reject)
    assert reject.task is theirs
    assert reject.error.type == TaskErrorType.TASK_ID_IN_USE == "task_id_in_use"
    assert "another tenant" in reject.error.message
    assert "acme" not in reject.error.message  # the owner is not named to the other tenant


def test_the_same_tenants_repeat_stays_an_idempotent_no_op() -> None:
    again = TaskSubmitted(task_id="t1", workflow="diamond", tenant="acme")
    assert decide_now(again) == (Ignore("duplicate submission: a repeated task_id starts nothing"),)


def test_a_cancel_from_another_tenant_is_refused_and_recorded() -> None:
    theirs = TaskCancelRequested(task_id="t1", tenant="globex", reason="mine now")
    [refused] = decide_now(theirs)
    assert refused == Ignore(
        "cancel requested by tenant 'globex', which does not own the task",
        HistoryKind.CANCEL_REFUSED,
    )
    ours = TaskCancelRequested(task_id="t1", tenant="acme", reason="done with it")
    assert decide_now(ours) == (Cancel("done with it"),)


def test_a_cancel_without_a_tenant_is_the_default_tenants() -> None:
    request = TaskCancelRequested.model_validate({"task_id": "t1"})
    assert request.tenant == "default"
    [refused] = decide_now(request)  # acme's run
    assert isinstance(refused, Ignore) and refused.kind == HistoryKind.CANCEL_REFUSED
    assert decide_now(request, tenant="default") == (Cancel("cancel requested"),)


# --- the use cases, on SQLite -----------------------------------------------------------------


def stored(h: Harness, task_id: str) -> dict[str, Any]:
    with h.engine.connect() as c:
        row = c.execute(sa.select(runs).where(runs.c.task_id == task_id)).one()
    return dict(row._mapping)


def test_a_collision_answers_the_submitter_and_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'router.db'}", ECHO)
    mine = TaskSubmitted(task_id="t1", workflow="echo-one", input={"secret": 1}, tenant="a")
    accepted = h.run(h.router.accept_task, mine)
    assert [(t, type(p).__name__, getattr(p, "tenant", None)) for t, p in accepted] == [
        ("t.task-events.v1", "TaskAccepted", "a"),
        ("t.steps.default.v1", "StepRequested", "a"),
    ]
    before, history = stored(h, "t1"), h.events("t1")
    theirs = TaskSubmitted(task_id="t1", workflow="echo-one", input={"other": 2}, tenant="b")
    [(topic, rejected)] = h.run(h.router.accept_task, theirs)
    assert topic == "t.task-events.v1"
    assert isinstance(rejected, TaskRejected)
    assert (rejected.task_id, rejected.tenant, rejected.workflow) == ("t1", "b", "echo-one")
    assert rejected.error.type == "task_id_in_use" and rejected.dlq is None
    assert stored(h, "t1") == before and h.events("t1") == history
    assert h.run(h.router.accept_task, mine) == []  # a's own repeat: still nothing


def test_a_cancel_from_another_tenant_is_in_the_history_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'router.db'}", ECHO)
    h.run(h.router.accept_task, TaskSubmitted(task_id="t1", workflow="echo-one", tenant="a"))
    assert h.run(h.router.cancel_task, TaskCancelRequested(task_id="t1", tenant="b")) == []
    assert stored(h, "t1")["status"] == "running"
    assert h.events("t1")[-1] == "cancel_refused"
    [(_, cancelled)] = h.run(h.router.cancel_task, TaskCancelRequested(task_id="t1", tenant="a"))
    assert isinstance(cancelled, TaskCancelled) and cancelled.tenant == "a"


def test_a_refused_record_says_whose_it_was_when_it_can() -> None:
    body = orjson.dumps({"task_id": "t1", "workflow": "w", "tenant": "b", "priority": "x"})
    who = refused_submission(b"t1", body, [("ce_type", b"podium.task.submitted.v1")])
    assert who is not None and who.tenant == "b"
    unreadable = refused_submission(b"t1", b"\xff{", [("ce_type", b"podium.task.submitted.v1")])
    assert unreadable is not None and unreadable.tenant is None


# --- the client -------------------------------------------------------------------------------


def outcome(task_id: str, tenant: str | None) -> TaskCompleted:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return TaskCompleted(
        task_id=task_id,
        workflow="w",
        output={"secret": 1},
        steps=[],
        accepted_at=t,
        completed_at=t,
        tenant=tenant,
    )


def test_a_client_takes_only_its_own_tenants_outcomes() -> None:
    assert not belongs(outcome("t1", "a"), "b")  # a's task, named by b: never b's answer
    assert belongs(outcome("t1", "b"), "b")
    assert not belongs(outcome("t1", None), "b")  # a router before tenants: default's
    assert belongs(outcome("t1", None), "default")
    rejected = TaskRejected.model_validate(
        {"task_id": "t1", "error": {"type": "undecodable", "message": "?"}, "rejected_at": NOW}
    )
    assert belongs(rejected, "b")  # whose it was could not be read: it names no task

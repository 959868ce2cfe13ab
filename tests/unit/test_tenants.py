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
from pydantic import ValidationError

from podium.client import belongs
from podium_contracts import (
    HistoryKind,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskErrorType,
    TaskHistoryRecorded,
    TaskRejected,
    TaskSubmitted,
    TenantMismatch,
    decode,
    encode,
)
from podium_router.decisions import Cancel, Ignore, Reject, bound_tenant, decide
from podium_router.handlers import make_handler
from podium_router.rejections import refused_submission
from podium_router.state import runs
from podium_shared import ConsumeLoop, Settings, Topics, acls
from podium_shared.db import outbox
from podium_shared.dlq import dlq_headers
from tests.unit.test_consume_loop import RecordingConsumer, Relay, record
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


# --- tenants bound to topics of their own (PODIUM_TENANTS) ------------------------------------


def test_a_tenants_topic_binds_the_messages_on_it() -> None:
    unnamed = TaskSubmitted(task_id="t1", workflow="w")
    assert bound_tenant("b", unnamed).tenant == "b"  # names none: the topic's
    named = TaskSubmitted(task_id="t1", workflow="w", tenant="b")
    assert bound_tenant("b", named) is named
    with pytest.raises(TenantMismatch, match="claims tenant 'a' on tenant 'b'") as err:
        bound_tenant("b", TaskSubmitted(task_id="t1", workflow="w", tenant="a"))
    assert err.value.reason == "tenant_mismatch"
    with pytest.raises(TenantMismatch):
        bound_tenant("b", TaskCancelRequested(task_id="t1", tenant="a"))
    assert bound_tenant("b", TaskCancelRequested(task_id="t1")).tenant == "b"
    as_sent = TaskSubmitted(task_id="t1", workflow="w", tenant="default")  # what encode writes
    assert bound_tenant("b", as_sent).tenant == "b"
    # the shared topic's writers (the operator, trusted services) may name any tenant
    assert bound_tenant(None, named.model_copy(update={"tenant": "a"})).tenant == "a"


def test_tenant_topics_are_named_declared_and_carry_what_the_shared_ones_do() -> None:
    topics = Topics("p")
    assert topics.tenant_tasks("a") == "p.tenant.a.tasks.v1"
    assert topics.tenant_task_events("a") == "p.tenant.a.task-events.v1"
    assert [topics.tenant_of(t) for t in ("p.tenant.a.tasks.v1", "p.tasks.v1")] == ["a", None]
    assert topics.tenant_of("p.tenant.a.task-events.v1") is None
    assert topics.tenant_of("p.tenant.a.b.tasks.v1") is None
    assert topics.carries("p.tenant.a.tasks.v1") == topics.carries(topics.tasks)
    assert topics.carries("p.tenant.a.task-events.v1") == topics.carries(topics.task_events)
    names = {t.name for t in topics.declarations(("default",), tenants=("a",))}
    plain = {t.name for t in topics.declarations(("default",))}
    assert names - plain == {
        "p.tenant.a.tasks.v1",
        "p.tenant.a.task-events.v1",
        "p.tenant.a.tasks.v1.dlq",
        "p.tenant.a.task-events.v1.dlq",
    }


def test_the_tenants_setting_is_a_list_of_names_fit_for_topics_and_users() -> None:
    assert Settings(tenants=" a, b-2 ,a").tenant_names == ("a", "b-2")
    assert Settings().tenant_names == ()
    for bad in ("A", "a.b", "a b", "-a"):
        with pytest.raises(ValidationError, match="lower-case"):
            Settings(tenants=bad)


def test_each_tenant_principal_may_write_its_ingress_and_read_its_outcomes_only() -> None:
    entries = acls.acls("p", ("default",), ("a", "b"))
    grants = {(e.resource.name, e.name, e.pattern.name, e.operation.name) for e in entries}
    for tenant in ("a", "b"):
        mine = {
            (e.resource.name, e.name, e.pattern.name, e.operation.name)
            for e in entries
            if e.principal == f"tenant-{tenant}"
        }
        assert mine == {
            ("TOPIC", f"p.tenant.{tenant}.tasks.v1", "LITERAL", "WRITE"),
            ("TOPIC", f"p.tenant.{tenant}.task-events.v1", "LITERAL", "READ"),
            ("GROUP", f"p-tenant-{tenant}", "LITERAL", "READ"),
            ("GROUP", f"p-tenant-{tenant}.", "PREFIXED", "READ"),
            ("CLUSTER", "kafka-cluster", "LITERAL", "IDEMPOTENT_WRITE"),
        }
        router = {
            (e.name, e.operation.name)
            for e in entries
            if e.principal == "router" and f".tenant.{tenant}." in e.name
        }
        assert router == {
            (f"p.tenant.{tenant}.tasks.v1", "READ"),
            (f"p.tenant.{tenant}.tasks.v1.dlq", "WRITE"),
            (f"p.tenant.{tenant}.task-events.v1", "WRITE"),
        }
    assert grants >= {("TOPIC", "p.", "PREFIXED", "ALL")}  # the operator's, unchanged
    assert acls.acls("p", ("default",)) == [
        e for e in entries if "tenant" not in e.principal and ".tenant." not in e.name
    ]


def outbox_rows(engine: sa.Engine) -> list[tuple[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(sa.select(outbox).order_by(outbox.c.id)).all()
    out = []
    for r in rows:
        headers = [(k, v.encode("latin-1")) for k, v in r.headers]
        if r.topic.endswith(".dlq"):
            out.append((r.topic, dlq_headers(headers)["reason"]))
        else:
            out.append((r.topic, decode(r.value, headers).payload))
    return out


async def test_the_router_takes_the_tenant_from_its_topic_and_refuses_another_claim(
    tmp_path: Path,
) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'router.db'}", ECHO)
    h.router.tenants = frozenset({"a", "b"})
    loop = ConsumeLoop(
        consumer=RecordingConsumer(),  # type: ignore[arg-type]
        engine=h.engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=make_handler(h.router),
        group="t-router",
        service="router",
    )
    claim_a, claim_a_headers = encode(
        TaskSubmitted(task_id="t1", workflow="echo-one", tenant="a"), source="b-app", id="e1"
    )
    unnamed, unnamed_headers = encode(
        TaskSubmitted(task_id="t2", workflow="echo-one"), source="b-app", id="e2"
    )
    await loop.process(
        [
            record(0, claim_a, claim_a_headers, topic="t.tenant.b.tasks.v1"),
            record(1, unnamed, unnamed_headers, topic="t.tenant.b.tasks.v1"),
        ]
    )
    rows = outbox_rows(h.engine)
    assert rows[0] == ("t.tenant.b.tasks.v1.dlq", "tenant_mismatch")
    rejected = [p for t, p in rows[1:3]]
    assert [t for t, _ in rows[1:3]] == ["t.task-events.v1", "t.tenant.b.task-events.v1"]
    assert all(isinstance(p, TaskRejected) for p in rejected)
    assert {(p.task_id, p.tenant, p.error.type) for p in rejected} == {
        ("t1", "b", "tenant_mismatch")
    }
    with h.engine.connect() as c:
        assert c.execute(sa.select(runs.c.task_id)).scalars().all() == ["t2"]
    assert stored(h, "t2")["tenant"] == "b"  # named none: the topic's tenant
    accepted = [
        (t, type(p).__name__)
        for t, p in rows[3:]
        if not t.startswith("t.steps") and not isinstance(p, TaskHistoryRecorded)
    ]
    assert accepted == [
        ("t.task-events.v1", "TaskAccepted"),
        ("t.tenant.b.task-events.v1", "TaskAccepted"),
    ]

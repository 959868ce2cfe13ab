"""Memory capabilities through Memory.run_step and the handler, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_contracts import (
    StepAbandoned,
    StepCompleted,
    StepError,
    StepFailed,
    StepRequested,
    StepSummary,
    TaskAccepted,
    TaskCancelled,
    TaskCompleted,
    TaskError,
    TaskFailed,
    TaskRejected,
    asyncapi,
    decode,
    encode,
)
from podium_memory.handlers import make_handler, use_cases
from podium_memory.service import Memory
from podium_memory.settings import MemorySettings
from podium_memory.state import entries
from podium_shared import Topics, UnitOfWork
from tests.unit.test_memory_store import NOW
from tests.unit.test_memory_store import engine as engine  # the shared fixture

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, engine: Engine, **settings: Any) -> None:
        self.engine = engine
        self.clock = Clock()
        self.memory = Memory(Topics("t"), MemorySettings(**settings), clock=self.clock)
        self.handler = make_handler(self.memory)
        self.n = 0

    def deliver(self, payload: Any) -> list[Any]:
        value, headers = encode(payload, source="test")
        with self.engine.begin() as conn:
            uow = UnitOfWork(conn, source="memory")
            self.handler.apply(decode(value, headers), None, uow)
            out = list(uow.pending)
        return [decode(m.value, m.headers).payload for m in out]

    def step(
        self, capability: str, input: dict[str, Any], *, key: str | None = None, **kw: Any
    ) -> Any:
        self.n += 1
        fields: dict[str, Any] = {
            "task_id": f"task-{self.n}",
            "tenant": "acme",
            "subject": "ada",
            "workflow": "w",
            **kw,
        }
        step = StepRequested(
            step_id="s",
            capability=capability,
            pool="memory",
            input=input,
            idempotency_key=key or f"key-{self.n}",
            **fields,
        )
        [result] = self.deliver(step)
        return result

    def ok(self, capability: str, input: dict[str, Any], **kw: Any) -> Any:
        result = self.step(capability, input, **kw)
        assert isinstance(result, StepCompleted), result
        return result.output

    def failed(self, capability: str, input: dict[str, Any], **kw: Any) -> str:
        result = self.step(capability, input, **kw)
        assert isinstance(result, StepFailed), result
        assert result.error.error_class == "fatal"
        return result.error.type

    def texts(self, input: dict[str, Any], **kw: Any) -> list[str]:
        return [e["text"] for e in self.ok("memory.recall", input, **kw)["entries"]]


@pytest.fixture
def h(engine: Engine) -> Harness:
    return Harness(engine)


def test_remember_then_recall_by_relevance_in_the_subject_scope(h: Harness) -> None:
    out = h.ok("memory.remember", {"text": "Ada prefers tea over coffee", "metadata": {"k": 1}})
    assert out["scope"] == {"kind": "subject", "id": "ada"}
    h.ok("memory.remember", {"text": "Ada lives in London"})
    [entry] = h.ok("memory.recall", {"query": "what does she drink? tea"})["entries"]
    assert entry["text"] == "Ada prefers tea over coffee" and entry["metadata"] == {"k": 1}
    assert entry["type"] == "fact" and entry["tokens"] == 7
    assert h.texts({"query": "tea"}, subject="bob") == []
    assert h.texts({"query": "tea"}, tenant="globex") == []


def test_a_retried_step_remembers_once(h: Harness) -> None:
    first = h.ok("memory.remember", {"text": "remembered exactly once"}, key="t/s")
    again = h.ok("memory.remember", {"text": "remembered exactly once"}, key="t/s")
    assert first == again
    assert h.texts({"query": "remembered"}) == ["remembered exactly once"]


def test_limit_and_token_budget(h: Harness) -> None:
    h.ok("memory.remember", {"text": "budget " + "x" * 400})  # ~102 tokens
    for i in range(4):
        h.ok("memory.remember", {"text": f"budget note {i}"})
    assert len(h.texts({"query": "budget", "limit": 2})) == 2
    small = h.texts({"query": "budget", "max_tokens": 20})
    assert small and all(len(t) < 100 for t in small)
    assert sum(len(t) for t in small) / 4 <= 20
    assert len(h.texts({"query": "", "limit": 10})) == 5  # no words: the newest entries


def test_entitlements_refuse_other_subjects_workflows_and_tenants(h: Harness) -> None:
    other_subject = {"kind": "subject", "id": "bob"}
    other_workflow = {"kind": "workflow", "id": "payroll"}
    assert h.failed("memory.recall", {"scopes": [other_subject]}) == "forbidden"
    assert h.failed("memory.remember", {"text": "x", "scope": other_workflow}) == "forbidden"
    assert h.failed("memory.forget", {"tenant": "globex"}) == "forbidden"
    assert h.failed("memory.recall", {"scopes": [{"kind": "subject"}]}, subject=None) == "forbidden"
    assert h.failed("memory.recall", {"scopes": [{"kind": "project"}]}) == "forbidden"
    assert h.failed("memory.recall", {"scopes": [{"kind": "tenant"}]}) == "invalid_input"
    assert h.failed("memory.recall", {"qeury": "typo"}) == "invalid_input"
    assert h.failed("memory.remember", {}) == "invalid_input"
    assert h.failed("memory.summon", {}) == "unknown_capability"


def test_project_and_workflow_scopes_are_shared_and_sessions_are_private(h: Harness) -> None:
    project = {"kind": "project", "id": "apollo"}
    h.ok("memory.remember", {"text": "apollo ships friday", "scope": project})
    h.ok("memory.remember", {"text": "workflow lesson learnt", "scope": {"kind": "workflow"}})
    assert h.texts({"query": "apollo ships", "scopes": [project]}, subject="bob") == [
        "apollo ships friday"
    ]
    assert h.texts({"query": "apollo"}, subject="bob") == []  # not named: not searched
    assert h.texts({"query": "lesson", "scopes": [{"kind": "workflow"}]}, subject=None) == [
        "workflow lesson learnt"
    ]
    assert h.texts({"query": "apollo", "scopes": [project]}, tenant="globex") == []
    h.ok("memory.conversation", {"session": "s1", "append": {"text": "my pin is 1234"}})
    bob = h.ok("memory.conversation", {"session": "s1"}, subject="bob")
    assert bob["turns"] == [] and bob["summary"] == ""


def test_forget_by_id_scope_and_tenant(h: Harness) -> None:
    kept = h.ok("memory.remember", {"text": "keep this fact"})["id"]
    gone = h.ok("memory.remember", {"text": "drop this fact"})["id"]
    h.ok("memory.remember", {"text": "globex fact"}, tenant="globex")
    assert h.ok("memory.forget", {"ids": [gone, 999_999]}) == {"forgotten": 1}
    assert h.ok("memory.forget", {"ids": [kept]}, subject="bob") == {"forgotten": 0}
    assert h.texts({"query": "fact"}) == ["keep this fact"]
    assert h.ok("memory.forget", {"scopes": [{"kind": "subject"}]}) == {"forgotten": 1}
    h.ok("memory.remember", {"text": "another fact", "scope": {"kind": "project", "id": "p"}})
    assert h.ok("memory.forget", {"tenant": "acme"}) == {"forgotten": 1}
    assert h.texts({"query": "fact", "scopes": [{"kind": "project", "id": "p"}]}) == []
    assert h.texts({"query": "fact"}, tenant="globex") == ["globex fact"]


def test_ttl_hides_at_once_and_a_requested_ttl_can_only_shorten_it(engine: Engine) -> None:
    h = Harness(engine, ttl_subject_s=100)
    h.ok("memory.remember", {"text": "scope ttl fact"})
    h.ok("memory.remember", {"text": "short ttl fact", "ttl_s": 10})
    h.ok("memory.remember", {"text": "long ttl fact", "ttl_s": 1_000})
    h.clock.now += 50
    assert h.texts({"query": "fact"}) == ["long ttl fact", "scope ttl fact"]
    h.clock.now += 51
    assert h.texts({"query": "fact"}) == []


def test_conversation_keeps_a_window_and_folds_older_turns(h: Harness) -> None:
    said = ["Hi, I am Ada. I like tea.", "Hello Ada!", "Book me a table.", "For when?", "Friday."]
    out: dict[str, Any] = {}
    for i, text in enumerate(said):
        role = "user" if i % 2 == 0 else "assistant"
        out = h.ok(
            "memory.conversation",
            {"session": "s1", "window": 2, "append": {"role": role, "text": text}},
            key=f"c/{i}",
        )
    assert [t["text"] for t in out["turns"]] == ["For when?", "Friday."]
    assert out["summary"] == "user: Hi, I am Ada.\nassistant: Hello Ada!\nuser: Book me a table."
    assert out["folded_turns"] == 3
    again = h.ok(
        "memory.conversation",
        {"session": "s1", "window": 2, "append": {"role": "user", "text": "Friday."}},
        key="c/4",
    )
    assert again == out  # the same step again appends nothing
    read = h.ok("memory.conversation", {"session": "s1", "window": 2})
    assert read == out
    assert h.texts({"query": "table", "scopes": [{"kind": "session", "id": "s1"}]}) == [
        "Book me a table."
    ]


def _completed(task_id: str, **owner: Any) -> TaskCompleted:
    now = datetime.now(UTC)
    return TaskCompleted(
        task_id=task_id,
        workflow="w",
        output={"answer": 42},
        steps=[
            StepSummary(
                step_id="s", capability="memory.recall", pool="memory", attempts=1, duration_ms=1.0
            )
        ],
        accepted_at=now,
        completed_at=now,
        **owner,
    )


EPISODES = {"scopes": [{"kind": "workflow"}], "types": ["episode"], "limit": 10}


def _episodes(h: Harness, **kw: Any) -> list[str]:
    entries = h.ok("memory.recall", {**EPISODES, "query": "completed failed"}, **kw)["entries"]
    return sorted(e["metadata"]["task_id"] for e in entries)


def test_finished_tasks_become_episodes_in_their_workflow_scope(h: Harness) -> None:
    # Events from an older router carry no tenant or subject: the memory steps noted them.
    h.ok("memory.recall", {"query": "anything"}, task_id="run-1")
    assert (
        h.deliver(TaskAccepted(task_id="run-1", workflow="w", accepted_at=datetime.now(UTC))) == []
    )
    assert h.deliver(_completed("run-1")) == []
    assert h.deliver(_completed("run-1")) == []  # redelivered: still one episode
    h.ok("memory.recall", {}, task_id="run-2", subject="bob")
    failed = TaskFailed(
        task_id="run-2",
        workflow="w",
        error=TaskError(type="timeout", message="too slow", step_id="s"),
        failed_at=datetime.now(UTC),
    )
    h.deliver(failed)
    h.ok("memory.recall", {}, task_id="run-3", subject=None)
    h.deliver(_completed("run-3"))
    h.deliver(_completed("never-seen"))  # no memory step: tenant unknown, nothing recorded
    # Each subject sees its own episodes and the subject-less task's, never the other's.
    assert _episodes(h) == ["run-1", "run-3"]
    assert _episodes(h, subject="bob") == ["run-2", "run-3"]
    assert _episodes(h, subject=None) == ["run-3"]
    episodes = h.ok("memory.recall", {**EPISODES, "query": "completed"})["entries"]
    done = next(e for e in episodes if e["metadata"]["task_id"] == "run-1")
    assert done["scope"] == {"kind": "workflow", "id": "w"}
    assert done["metadata"]["outcome"] == "completed" and '{"answer":42}' in done["text"]
    assert len(done["metadata"]["output_digest"]) == 16
    assert h.texts({**EPISODES, "query": "completed"}, tenant="globex") == []


def test_a_subjects_episode_reaches_no_other_subject_or_tenant_by_any_path(h: Harness) -> None:
    h.deliver(_completed("ada-task", tenant="acme", subject="ada"))
    h.deliver(_completed("shared-task", tenant="acme"))
    assert _episodes(h) == ["ada-task", "shared-task"]
    ada_id = next(
        e["id"]
        for e in h.ok("memory.recall", EPISODES)["entries"]
        if e["metadata"]["task_id"] == "ada-task"
    )
    every_scope = [
        {"kind": "subject"},
        {"kind": "workflow"},
        {"kind": "workflow", "id": "w"},
        {"kind": "project", "id": "w"},
        {"kind": "session", "id": "w"},
    ]
    for who in ({"subject": "bob"}, {"subject": None}, {"tenant": "globex"}):
        for scope in every_scope:
            if scope["kind"] == "subject" and who.get("subject", "ada") is None:
                continue  # a task without a subject has no subject scope (refused)
            for query in ("", "answer 42 completed", "ada task"):
                found = h.ok("memory.recall", {"query": query, "scopes": [scope]}, **who)
                assert "ada-task" not in str(found), (who, scope, query)
        # Forgetting cannot reach it either: not by id, not by scope.
        assert (
            h.ok("memory.forget", {"ids": [ada_id], "scopes": [{"kind": "workflow"}]}, **who)[
                "forgotten"
            ]
            == 0
        )
        h.ok("memory.forget", {"scopes": [{"kind": "workflow"}]}, **who)
        h.ok("memory.conversation", {"session": "w"}, **who)
    # Naming ada's scope in the input is refused, whoever's step it is.
    bob = {"subject": "bob"}
    assert h.failed("memory.recall", {"scopes": [{"kind": "subject", "id": "ada"}]}, **bob) == (
        "forbidden"
    )
    assert h.failed("memory.forget", {"tenant": "acme"}, tenant="globex") == "forbidden"
    # bob's forget of the workflow scope took the shared episode, not ada's.
    assert _episodes(h) == ["ada-task"]
    # Erasing ada's subject erases her episodes too.
    assert h.ok("memory.forget", {"scopes": [{"kind": "subject"}]}) == {"forgotten": 1}
    assert _episodes(h) == []


def test_a_subjects_episode_lives_no_longer_than_the_subjects_data(engine: Engine) -> None:
    h = Harness(engine, ttl_subject_s=100, ttl_workflow_s=1_000)
    h.deliver(_completed("ada-task", tenant="acme", subject="ada"))
    h.deliver(_completed("shared-task", tenant="acme"))
    h.clock.now += 101
    assert _episodes(h) == ["shared-task"]


def test_the_handler_refuses_what_memory_does_not_consume(h: Harness) -> None:
    abandoned = StepAbandoned(
        task_id="t", step_id="s", attempts=1, error=StepError(type="x", message="y")
    )
    with pytest.raises(TypeError, match="StepAbandoned"):
        h.deliver(abandoned)


def test_every_contract_on_the_topics_memory_reads_is_handled_or_ignored(h: Harness) -> None:
    # Anything else on them would be dead-lettered as a processing error every time.
    read = {t for ch in asyncapi.CHANNELS if "memory" in ch.consumers for t in ch.ce_types}
    steps = next(ch for ch in asyncapi.CHANNELS if "{pool}" in ch.address)
    assert "memory" in steps.consumers
    assert read == {c.CE_TYPE for c in use_cases(h.memory)}
    cancelled = TaskCancelled(
        task_id="run-1", workflow="w", reason="not needed", cancelled_at=datetime.now(UTC)
    )
    assert h.deliver(cancelled) == []  # ignored: nothing published, nothing stored
    with h.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(entries)).scalar() == 0


def test_a_recall_too_large_for_a_message_fails_the_step_too_large(engine: Engine) -> None:
    h = Harness(engine)
    for i in range(12):
        h.ok("memory.remember", {"text": f"large {i} " + "x" * 90_000})
    assert len(h.texts({"query": "large", "limit": 3})) == 3
    result = h.step("memory.recall", {"query": "large", "limit": 12})
    assert isinstance(result, StepFailed), result
    assert result.error.type == "too_large" and result.error.error_class == "fatal"
    assert "memory.recall: output is" in result.error.message


def test_task_events_that_are_no_episode_are_read_and_left(h: Harness) -> None:
    # memory reads all of task-events: a rejection or a cancellation must not be dead-lettered
    now = datetime.now(UTC)
    rejected = TaskRejected(
        task_id="r", error=TaskError(type="invalid", message="priority"), rejected_at=now
    )
    cancelled = TaskCancelled(task_id="c", workflow="w", reason="not needed", cancelled_at=now)
    assert h.deliver(rejected) == [] and h.deliver(cancelled) == []


def test_only_tasks_that_ran_a_memory_step_leave_an_episode(h: Harness) -> None:
    # An episode lives in its workflow's scope, read only by that workflow's memory steps:
    # a task that ran none (a `hello`) leaves nothing, even with its tenant in the event.
    now = datetime.now(UTC)
    plain = _completed("plain", tenant="acme", subject="ada").model_copy(
        update={
            "steps": [
                StepSummary(
                    step_id="s", capability="echo", pool="default", attempts=1, duration_ms=1.0
                )
            ]
        }
    )
    assert h.deliver(plain) == []
    error = TaskError(type="timeout", message="too slow", step_id="s")
    h.deliver(
        TaskFailed(
            task_id="plain-failed",
            workflow="w",
            error=error,
            failed_at=now,
            tenant="acme",
            subject="ada",
        )
    )
    # A failed task lists no steps: memory's own note of its memory step decides.
    h.ok("memory.recall", {}, task_id="used-memory", subject="ada")
    h.deliver(
        TaskFailed(
            task_id="used-memory",
            workflow="w",
            error=error,
            failed_at=now,
            tenant="acme",
            subject="ada",
        )
    )
    h.deliver(_completed("recalled", tenant="acme", subject="ada"))
    assert _episodes(h) == ["recalled", "used-memory"]


def test_memory_passes_over_events_it_has_nothing_to_do_with(h: Harness) -> None:
    wants = h.handler.wants
    assert wants is not None
    now = datetime.now(UTC)

    def event(payload: Any) -> Any:
        return decode(*encode(payload, source="test"))

    used = _completed("t", tenant="acme")
    unused = used.model_copy(
        update={"steps": [s.model_copy(update={"pool": "default"}) for s in used.steps]}
    )
    error = TaskError(type="timeout", message="too slow")
    assert wants(event(used))
    assert not wants(event(unused))
    assert wants(event(TaskFailed(task_id="t", workflow="w", error=error, failed_at=now)))
    assert not wants(event(TaskAccepted(task_id="t", workflow="w", accepted_at=now)))
    assert not wants(event(TaskCancelled(task_id="t", workflow="w", reason="x", cancelled_at=now)))
    assert not wants(event(TaskRejected(task_id="t", error=error, rejected_at=now)))
    step = StepRequested(
        task_id="t",
        step_id="s",
        capability="memory.recall",
        pool="memory",
        input={"query": "x"},
        idempotency_key="k",
        tenant="acme",
        workflow="w",
    )
    assert wants(event(step))

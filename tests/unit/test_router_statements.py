"""What the router's database executes per message, counted, not timed: a fetched
batch of one-step `hello` submissions, then a batch of their step results, through
the real consume loop and the router's handler on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord

from podium_contracts import (
    Contract,
    StepCompleted,
    StepRequested,
    TaskCancelRequested,
    TaskCompleted,
    TaskSubmitted,
    Usage,
    decode,
    encode,
)
from podium_router import service
from podium_router.handlers import make_handler
from podium_router.service import Router
from podium_router.state import history, metadata, run_steps, runs
from podium_router.workflows import Workflow, WorkflowCatalog
from podium_shared import ConsumeLoop, Topics, make_engine
from podium_shared.db import inbox, outbox
from tests.unit.test_consume_loop import RecordingConsumer, Relay, record

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TOPICS = Topics("t")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
N = 20
# Everything the router's database runs for one fetched batch, whatever its size: the
# inbox's look-up and insert, the runs with their steps, new runs or step changes, new
# steps or run changes, the history, the outbox. Before batch writes the two batches
# below ran 103 and 143 statements (6.15 per message, SQLite and PostgreSQL alike).
BOUND_PER_BATCH = 7
DIAMOND = {
    "name": "diamond",
    "steps": [
        {"id": "a", "uses": "echo"},
        {"id": "b", "uses": "echo", "needs": ["a"]},
        {"id": "c", "uses": "echo", "needs": ["a"]},
        {"id": "d", "uses": "echo", "needs": ["b", "c"]},
    ],
}


@dataclass
class Counted:
    """The statements an engine ran, one per cursor execution (an executemany is one)."""

    statements: list[str] = field(default_factory=list)

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement)


@dataclass
class RouterUnderTest:
    engine: sa.Engine
    loop: ConsumeLoop
    counted: Counted
    offset: int = 0

    async def feed(self, topic: str, payloads: list[Contract]) -> int:
        """Handle ``payloads`` as one fetched batch; how many statements that ran."""
        records: list[ConsumerRecord[bytes, bytes]] = []
        for p in payloads:
            self.offset += 1
            records.append(record(self.offset, *encode(p, source="test"), topic=topic))
        before = len(self.counted.statements)
        await self.loop.process(records)
        return len(self.counted.statements) - before

    def sent(self, offset: int = 0) -> list[tuple[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(outbox).where(outbox.c.id > offset).order_by(outbox.c.id))
            return [
                (r.topic, decode(r.value, [(k, v.encode("latin-1")) for k, v in r.headers]))
                for r in rows
            ]


def _router(database_url: str, *, batched: bool = True) -> RouterUnderTest:
    engine = make_engine(database_url, metadata)
    catalog = WorkflowCatalog(
        [*WorkflowCatalog.load(str(REPO / "workflows")).all(), Workflow.model_validate(DIAMOND)]
    )
    handler = make_handler(Router(catalog, TOPICS, clock=lambda: T0))
    loop = ConsumeLoop(
        consumer=RecordingConsumer(),  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=handler if batched else replace(handler, batch=None),
        group="t.router",
        service="router",
        carries=TOPICS.carries,
    )
    counted = Counted()
    sa.event.listen(engine, "before_cursor_execute", counted)
    return RouterUnderTest(engine, loop, counted)


@pytest.fixture
def router(database_url: str) -> Iterator[RouterUnderTest]:
    under_test = _router(database_url)
    try:
        yield under_test
    finally:
        under_test.engine.dispose()


def _results(sent: list[tuple[str, Any]]) -> list[StepCompleted]:
    requests = [e.payload for _, e in sent if isinstance(e.payload, StepRequested)]
    return [
        StepCompleted.for_step(r, output=r.input, duration_ms=1.0, usage=Usage()) for r in requests
    ]


async def test_a_batch_of_one_step_tasks_costs_few_statements_per_message(
    router: RouterUnderTest,
) -> None:
    tasks = [TaskSubmitted(task_id=f"t{i}", workflow="hello", input={"i": i}) for i in range(N)]
    accepting = await router.feed(TOPICS.tasks, list(tasks))
    results = _results(router.sent())
    assert len(results) == N
    finishing = await router.feed(TOPICS.step_results, list(results))

    assert router.loop.stats.handled == 2 * N and router.loop.stats.dead_lettered == 0
    completed = [e.payload for _, e in router.sent() if isinstance(e.payload, TaskCompleted)]
    assert sorted(c.task_id for c in completed) == sorted(t.task_id for t in tasks)
    assert all(c.output == {"i": int(c.task_id[1:])} for c in completed)
    with router.engine.connect() as c:
        assert set(c.execute(sa.select(runs.c.status)).scalars()) == {"completed"}
        assert set(c.execute(sa.select(run_steps.c.status)).scalars()) == {"completed"}
        assert c.execute(sa.select(sa.func.count()).select_from(history)).scalar() == 4 * N
    assert accepting <= BOUND_PER_BATCH and finishing <= BOUND_PER_BATCH, router.counted.statements
    assert (accepting + finishing) / (2 * N) <= 0.35  # per message, against 6.15 before


def _snapshot(under_test: RouterUnderTest) -> dict[str, list[Any]]:
    """The router's rows (history without its ids) and what it sent, envelopes aside."""
    with under_test.engine.connect() as c:
        state = {
            "runs": [r._asdict() for r in c.execute(sa.select(runs).order_by(runs.c.task_id))],
            "steps": [
                r._asdict()
                for r in c.execute(
                    sa.select(run_steps).order_by(run_steps.c.task_id, run_steps.c.step_id)
                )
            ],
            "history": [
                {k: v for k, v in r._asdict().items() if k != "id"}
                for r in c.execute(sa.select(history).order_by(history.c.id))
            ],
        }
    state["sent"] = [(t, e.payload.model_dump()) for t, e in under_test.sent()]
    return state


async def _story(under_test: RouterUnderTest) -> None:
    """Fan-out and fan-in, a repeated submission and a cancel within one batch, two
    results of one task in one batch, and a late repeat of a settled step's result."""
    sent = 0

    async def results(*, only: set[str] | None = None, but: set[str] = frozenset()) -> None:
        nonlocal sent
        new = under_test.sent()[sent:]
        sent += len(new)
        done = [r for r in _results(new) if (only is None or r.step_id in only)]
        await under_test.feed(TOPICS.step_results, [r for r in done if r.step_id not in but])

    await under_test.feed(
        TOPICS.tasks,
        [
            TaskSubmitted(task_id="fan", workflow="diamond", input={"q": 1}),
            TaskSubmitted(task_id="one", workflow="hello", input={"x": 1}),
            TaskSubmitted(task_id="one", workflow="hello", input={"x": 1}),
            TaskSubmitted(task_id="gone", workflow="hello"),
            TaskCancelRequested(task_id="gone", reason="changed my mind"),
            TaskSubmitted(task_id="nowhere", workflow="no-such-workflow"),
        ],
    )
    await results()  # fan/a, one/echo and gone/echo (cancelled: its result is ignored)
    await results()  # fan/b and fan/c together
    late = _results(under_test.sent()[:sent])
    await results()  # fan/d
    await under_test.feed(TOPICS.step_results, [r for r in late if r.task_id == "one"])


async def test_a_batch_writes_what_its_messages_would_write_one_at_a_time(
    database_url: str,
) -> None:
    snapshots = []
    for batched in (True, False):
        under_test = _router(database_url, batched=batched)
        try:
            await _story(under_test)
            snapshots.append(_snapshot(under_test))
            with under_test.engine.begin() as c:
                for table in (history, run_steps, runs, outbox, inbox):
                    c.execute(table.delete())
        finally:
            under_test.engine.dispose()
    batched_state, alone = snapshots
    assert [r["status"] for r in batched_state["runs"]] == [
        "completed",
        "cancelled",
        "failed",
        "completed",
    ]
    assert {"fan/d", "one/echo"} <= {f"{s['task_id']}/{s['step_id']}" for s in alone["steps"]}
    assert batched_state == alone


async def test_a_failing_message_sends_its_batch_one_at_a_time_with_nothing_held_back(
    router: RouterUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = service.decide

    def decide(run: Any, steps: Any, event: Any, **kwargs: Any) -> Any:
        if event.task_id == "bad":
            raise ValueError("this one breaks")
        return real(run, steps, event, **kwargs)

    monkeypatch.setattr(service, "decide", decide)
    tasks = [TaskSubmitted(task_id=t, workflow="hello") for t in ("a", "bad", "b")]
    await router.feed(TOPICS.tasks, list(tasks))
    assert (router.loop.stats.handled, router.loop.stats.dead_lettered) == (2, 1)
    with router.engine.connect() as c:
        assert sorted(c.execute(sa.select(runs.c.task_id)).scalars()) == ["a", "b"]
        entries = c.execute(sa.select(history.c.task_id, history.c.event).order_by(history.c.id))
        assert [tuple(e) for e in entries] == [
            ("a", "accepted"),
            ("a", "step_dispatched"),
            ("b", "accepted"),
            ("b", "step_dispatched"),
        ]
    answered = [(t, type(e.payload).__name__) for t, e in router.sent()]
    assert answered.count((TOPICS.task_events, "TaskRejected")) == 1

"""The effect ledger on a real SQLite file (the claiming relay: test_claiming_relay.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from podium_contracts import StepCompleted, StepFailed, StepRequested, decode
from podium_executor.capabilities import Capability, StepContext
from podium_executor.capabilities.basic import AnyInput
from podium_executor.ledger import Ledger
from podium_executor.service import Executor
from podium_executor.state import metadata
from podium_shared import Topics, UnitOfWork, make_engine

pytestmark = pytest.mark.unit


def step(key: str = "t1/s", attempt: int = 1, capability: str = "count") -> StepRequested:
    task_id = key.split("/")[0]
    return StepRequested(
        task_id=task_id,
        step_id="s",
        workflow="w",
        capability=capability,
        pool="default",
        input={"x": 1},
        idempotency_key=key,
        attempt=attempt,
    )


class Counting:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls = 0
        self.fail_first = fail_first

    async def run(self, data: AnyInput, ctx: StepContext) -> Any:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("boom")
        return {"call": self.calls, "key": ctx.idempotency_key}


def executor(tmp_path: Path, counting: Counting) -> tuple[Executor, sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'executor.db'}", metadata)
    caps = {"count": Capability("count", AnyInput, counting.run)}
    return Executor(caps, Topics("t"), ledger=Ledger(engine)), engine


def report(ex: Executor, engine: sa.Engine, s: StepRequested, outcome: Any) -> Any:
    with engine.begin() as conn:
        uow = UnitOfWork(conn, source="executor")
        ex.report(s, outcome, uow)
        [message] = uow.pending
    return decode(message.value, message.headers).payload


async def test_a_recorded_key_returns_its_result_without_acting_again(tmp_path: Path) -> None:
    counting = Counting()
    ex, engine = executor(tmp_path, counting)
    first = await ex.run_step(step())
    assert isinstance(first, StepCompleted)
    report(ex, engine, step(), first)
    again = await ex.run_step(step(attempt=2))  # a retry or a DLQ replay of the same step
    assert isinstance(again, StepCompleted)
    assert counting.calls == 1
    assert again.output == {"call": 1, "key": "t1/s"} and again.attempt == 2
    other = await ex.run_step(step("t2/s"))
    assert isinstance(other, StepCompleted) and counting.calls == 2


async def test_concurrent_executions_report_the_first_recorded_result(tmp_path: Path) -> None:
    counting = Counting()
    ex, engine = executor(tmp_path, counting)
    a, b = await asyncio.gather(ex.run_step(step()), ex.run_step(step()))  # both before a record
    assert counting.calls == 2
    sent_a = report(ex, engine, step(), a)
    sent_b = report(ex, engine, step(), b)
    assert sent_a.output == sent_b.output == a.output


async def test_failures_are_not_recorded_so_a_retry_runs_again(tmp_path: Path) -> None:
    counting = Counting(fail_first=1)
    ex, engine = executor(tmp_path, counting)
    failed = await ex.run_step(step())
    assert isinstance(failed, StepFailed) and failed.error.type == "capability_error"
    sent = report(ex, engine, step(), failed)
    assert isinstance(sent, StepFailed)
    retried = await ex.run_step(step(attempt=2))
    assert isinstance(retried, StepCompleted) and counting.calls == 2


async def test_keys_preloaded_for_a_batch_are_answered_without_a_query_each(
    tmp_path: Path,
) -> None:
    counting = Counting()
    ex, engine = executor(tmp_path, counting)
    assert ex.ledger is not None
    report(ex, engine, step("t1/s"), await ex.run_step(step("t1/s")))
    queries: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
    with engine.connect() as conn:
        ex.ledger.preload(conn, ["t1/s", "t2/s"])
    assert len(queries) == 1
    recorded = await ex.run_step(step("t1/s", attempt=2))
    fresh = await ex.run_step(step("t2/s"))
    assert len(queries) == 1  # both answered from the preload
    assert isinstance(recorded, StepCompleted) and recorded.output == {"call": 1, "key": "t1/s"}
    assert isinstance(fresh, StepCompleted) and counting.calls == 2
    # Used once: the next lookup of a key asks the database again.
    again = await ex.run_step(step("t1/s", attempt=3))
    assert len(queries) == 2 and isinstance(again, StepCompleted) and counting.calls == 2


def test_preloaded_keys_are_bounded(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'executor.db'}", metadata)
    ledger = Ledger(engine, preloaded_max=3)
    with engine.connect() as conn:
        ledger.preload(conn, [f"k{i}" for i in range(5)])  # e.g. steps dropped by a rebalance
    assert list(ledger._preloaded) == ["k2", "k3", "k4"]

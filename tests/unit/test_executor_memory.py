"""Executor and memory decisions without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from podium_contracts import StepCompleted, StepFailed, StepRequested, decode
from podium_executor.capabilities import BUILTINS
from podium_executor.service import Executor
from podium_memory.service import Memory
from podium_memory.state import metadata as memory_metadata
from podium_shared import Topics, UnitOfWork, make_engine

pytestmark = pytest.mark.unit


def step(capability: str, input: dict[str, object], **kw: object) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="s",
        workflow="w",
        capability=capability,
        pool="default",
        input=input,
        idempotency_key="t1/s",
        **kw,
    )  # type: ignore[arg-type]


async def test_echo_and_sleep_return_their_input() -> None:
    ex = Executor(BUILTINS, Topics("t"))
    out = await ex.run_step(step("echo", {"a": [1, 2]}))
    assert isinstance(out, StepCompleted) and out.output == {"a": [1, 2]}
    out = await ex.run_step(step("sleep", {"seconds": 0.01, "b": 1}))
    assert isinstance(out, StepCompleted) and out.output == {"seconds": 0.01, "b": 1}
    assert out.duration_ms >= 10


@pytest.mark.parametrize(
    ("capability", "input", "timeout", "error_type", "error_class"),
    [
        ("nope", {}, None, "unknown_capability", "fatal"),
        ("sleep", {"seconds": "soon"}, None, "invalid_input", "fatal"),
        ("sleep", {"seconds": 5}, 0.05, "timeout", "retryable"),
    ],
)
async def test_step_errors_are_classified(
    capability: str,
    input: dict[str, object],
    timeout: float | None,
    error_type: str,
    error_class: str,
) -> None:
    out = await Executor(BUILTINS, Topics("t")).run_step(step(capability, input, timeout_s=timeout))
    assert isinstance(out, StepFailed)
    assert (out.error.type, out.error.error_class) == (error_type, error_class)
    assert out.request.capability == capability


def test_memory_remembers_once_per_key_and_recalls_within_scope(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}", memory_metadata)
    memory = Memory(Topics("t"))

    def run(s: StepRequested) -> object:
        with engine.begin() as conn:
            uow = UnitOfWork(conn, source="memory")
            memory.run_step(s, uow)
            [m] = uow.pending
        return decode(m.value, m.headers).payload

    remember = step("memory.remember", {"text": "100% of cats_like naps"}, subject="ada")
    first, again = run(remember), run(remember)
    assert isinstance(first, StepCompleted) and isinstance(again, StepCompleted)
    assert first.output == again.output  # a retry of the same step remembers once
    recalled = run(step("memory.recall", {"query": "100%"}, subject="ada"))
    assert isinstance(recalled, StepCompleted) and len(recalled.output["entries"]) == 1
    assert run(step("memory.recall", {"query": "_"}, subject="ada")).output["entries"]  # type: ignore[attr-defined]
    other = run(step("memory.recall", {"query": ""}, subject="bob"))
    assert isinstance(other, StepCompleted) and other.output == {"entries": []}
    other_tenant = run(step("memory.recall", {}, subject="ada", tenant="acme"))
    assert isinstance(other_tenant, StepCompleted) and other_tenant.output == {"entries": []}
    bad = run(step("memory.remember", {}, subject="ada"))
    assert isinstance(bad, StepFailed) and bad.error.type == "invalid_input"

"""Circuit breakers, the rate limit and the error classes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from podium_contracts import StepCompleted, StepFailed, StepRequested
from podium_executor.breaker import Breakers, CircuitOpen, State
from podium_executor.capabilities import BUILTINS
from podium_executor.capabilities.drills import make_drills
from podium_executor.errors import CapabilityError, ErrorType
from podium_executor.ratelimit import PoolRateLimit
from podium_executor.service import Executor
from podium_executor.state import metadata
from podium_shared import Topics, make_engine
from tests.support.clock import FakeClock, run_in_virtual_time

pytestmark = pytest.mark.unit
# BUILTINS plus the drills (the file-less ``fail`` only: any root will do).
CAPS = {**BUILTINS, **{c.name: c for c in make_drills(Path("."))}}


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = FakeClock()
    b = Breakers(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        b.before_call("p")
        b.failed("p")
    b.before_call("p")
    b.succeeded("p")  # a success resets the count
    for _ in range(3):
        b.before_call("p")
        b.failed("p")
    assert b.state("p") is State.OPEN
    with pytest.raises(CircuitOpen, match=r"next trial in 10\.0s"):
        b.before_call("p")
    b.before_call("other")  # providers are independent
    clock.advance(10)
    b.before_call("p")  # the one trial call
    assert b.state("p") is State.HALF_OPEN
    with pytest.raises(CircuitOpen):
        b.before_call("p")  # others fail fast while the trial runs
    b.failed("p")
    assert b.state("p") is State.OPEN
    clock.advance(10)
    b.before_call("p")
    b.succeeded("p")
    assert b.state("p") is State.CLOSED


def down(_ctx: Any = None) -> StepRequested:
    return StepRequested(
        task_id="t",
        step_id="s",
        workflow="w",
        capability="fail",
        pool="p",
        input={"error": "retryable", "message": "down"},
        idempotency_key="t/s",
    )


async def test_open_circuit_fails_fast_as_retryable_unavailable() -> None:
    ex = Executor(CAPS, Topics("t"), breakers=Breakers(failures=2, cooldown_s=60))
    first, _, third = [await ex.run_step(down()) for _ in range(3)]
    assert isinstance(first, StepFailed) and first.error.message == "down"
    assert isinstance(third, StepFailed)
    assert (third.error.type, third.error.error_class) == ("unavailable", "retryable")
    assert "circuit for provider 'fail' is open" in third.error.message
    ok = await ex.run_step(down().model_copy(update={"capability": "echo", "input": {}}))
    assert isinstance(ok, StepCompleted)  # another provider is unaffected


async def test_invalid_input_does_not_count_against_the_provider() -> None:
    ex = Executor(CAPS, Topics("t"), breakers=Breakers(failures=1, cooldown_s=60))
    bad = down().model_copy(update={"capability": "sleep", "input": {"seconds": "x"}})
    for _ in range(3):
        out = await ex.run_step(bad)
        assert isinstance(out, StepFailed) and out.error.type == "invalid_input"
    good = down().model_copy(update={"capability": "sleep", "input": {"seconds": 0}})
    assert isinstance(await ex.run_step(good), StepCompleted)


# The rate limit's tests run in virtual time (tests/support/clock.py): the limiter's
# clock is the loop's, its waits take no real time, and how long the calls took is
# exact whatever the machine's load. The waits come from the token arithmetic, so a
# float rounding may add one 1 ms wait per paced call: hence the tolerance.
def limit(
    tmp_path: Path, clock: FakeClock, rate: float, burst: int, pool: str = "p"
) -> PoolRateLimit:
    engine = make_engine(f"sqlite:///{tmp_path / 'executor.db'}", metadata)
    return PoolRateLimit(engine, pool, rate, burst, clock=clock)


def test_the_rate_limit_paces_calls_after_the_burst(tmp_path: Path) -> None:
    clock = FakeClock()
    bucket = limit(tmp_path, clock, rate=50, burst=5)
    took: list[float] = []

    async def main() -> None:
        started = clock()
        for _ in range(5):  # the burst: no wait
            await bucket.acquire()
        assert clock() == started
        await asyncio.gather(*(bucket.acquire() for _ in range(10)))
        took.append(clock() - started)

    run_in_virtual_time(clock, main())
    assert took[0] == pytest.approx(10 / 50, abs=0.011)  # then 10 at 50/s


def test_the_rate_limit_is_the_pools_whatever_the_replicas(tmp_path: Path) -> None:
    # Two replicas (two limiters, one shared database) share one quota of 40/s:
    # 21 calls with a burst of 1 take 0.5 s, not the 0.25 s of 40/s each.
    clock = FakeClock()
    a, b = limit(tmp_path, clock, rate=40, burst=1), limit(tmp_path, clock, rate=40, burst=1)
    other_pool = limit(tmp_path, clock, rate=40, burst=1, pool="q")
    took: list[float] = []

    async def main() -> None:
        started = clock()
        await asyncio.gather(*(r.acquire() for r in [a, b] * 10 + [a]))
        took.append(clock() - started)
        started = clock()
        await other_pool.acquire()  # another pool's bucket is untouched
        took.append(clock() - started)

    run_in_virtual_time(clock, main())
    assert took[0] == pytest.approx(20 / 40, abs=0.021)
    assert took[1] == 0


def test_rate_limit_applies_to_capability_calls(tmp_path: Path) -> None:
    clock = FakeClock()
    ex = Executor(CAPS, Topics("t"), rate_limit=limit(tmp_path, clock, rate=20, burst=1))
    echo = down().model_copy(update={"capability": "echo", "input": {}})
    took: list[float] = []

    async def main() -> None:
        started = clock()
        outs = await asyncio.gather(*(ex.run_step(echo) for _ in range(5)))
        assert all(isinstance(o, StepCompleted) for o in outs)
        took.append(clock() - started)

    run_in_virtual_time(clock, main())
    assert took[0] == pytest.approx(4 / 20, abs=0.005)


def test_error_class_follows_the_type() -> None:
    assert CapabilityError(ErrorType.RATE_LIMITED, "x").error.error_class == "retryable"
    assert CapabilityError(ErrorType.INVALID_INPUT, "x").error.error_class == "fatal"
    assert CapabilityError("custom", "x", retryable=True).error.error_class == "retryable"


async def test_output_that_is_not_json_is_a_capability_error() -> None:
    from podium_executor.capabilities import Capability
    from podium_executor.capabilities.basic import AnyInput

    async def weird(_data: AnyInput, _ctx: Any) -> Any:
        return {"x": object()}

    ex = Executor({"weird": Capability("weird", AnyInput, weird)}, Topics("t"))
    out = await ex.run_step(down().model_copy(update={"capability": "weird", "input": {}}))
    assert isinstance(out, StepFailed) and out.error.type == "capability_error"
    assert "not JSON" in out.error.message

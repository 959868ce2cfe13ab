"""The template capability's bounds: ``*`` and ``**`` refused before they
allocate, the output counted as it streams, and a render that outlives its
step's timeout killed in its worker process while other steps go on."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

import pytest

from podium_contracts import StepCompleted, StepFailed, StepRequested
from podium_executor.capabilities import BUILTINS
from podium_executor.capabilities.template import MAX_OUTPUT, _renderer
from podium_executor.service import Executor
from podium_shared import Topics

pytestmark = pytest.mark.unit

# Burns CPU without output: 10**10 iterations, for hours.
NESTED_LOOP = (
    "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% if i * j < 0 %}x{% endif %}{% endfor %}{% endfor %}"
)


def step(step_id: str, capability: str, input: dict[str, Any], timeout_s: float) -> StepRequested:
    return StepRequested(
        task_id="t",
        step_id=step_id,
        workflow="w",
        capability=capability,
        pool="default",
        input=input,
        idempotency_key=f"t/{step_id}",
        timeout_s=timeout_s,
    )


async def render(template: str, timeout_s: float = 30) -> StepCompleted | StepFailed:
    ex = Executor(BUILTINS, Topics("t"))
    return await ex.run_step(step("s", "template", {"template": template}, timeout_s))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'x' * 10**7 }}", "a repetition of 10000000 items"),
        ("{{ 10**7 * 'x' }}", "a repetition of 10000000 items"),
        ("{{ [1] * 10**7 }}", "a repetition of 10000000 items"),
        ("{{ (9**(9**7)) > 0 }}", "a power of at least"),
        ("{{ (10**9000) * (10**9000) }}", "a product of about"),
        ("{{ '%0300000000d' % 1 }}", "printf formatting"),
    ],
    ids=["string", "string-right", "list", "power", "product", "printf"],
)
async def test_products_and_powers_over_the_bounds_are_refused_at_once(
    template: str, message: str
) -> None:
    started = time.monotonic()
    out = await render(template)
    assert isinstance(out, StepFailed)
    assert (out.error.type, out.error.error_class) == ("invalid_input", "fatal")
    assert message in out.error.message
    assert time.monotonic() - started < 10  # refused, not computed


async def test_honest_arithmetic_still_renders() -> None:
    out = await render("{{ 'ab' * 3 }} {{ 2**100 }} {{ 3 * 4 }} {{ 2.5 ** 2 }}")
    assert isinstance(out, StepCompleted)
    assert out.output == {"text": f"ababab {2**100} 12 6.25"}


async def test_what_no_bound_foresaw_meets_the_workers_memory_limit() -> None:
    out = await render("{{ '%0900000000d' | format(1) }}")  # 900 MB, asked of a filter
    assert isinstance(out, StepFailed) and "MemoryError" in out.error.message
    after = await render("{{ 1 + 1 }}")
    assert isinstance(after, StepCompleted) and after.output == {"text": "2"}


async def test_the_output_is_bounded_as_it_streams() -> None:
    out = await render("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}")
    assert isinstance(out, StepFailed) and out.error.type == "capability_error"
    assert f"output over {MAX_OUTPUT} characters" in out.error.message


async def test_a_runaway_render_ends_at_its_timeout_and_others_go_on() -> None:
    ex = Executor(BUILTINS, Topics("t"))
    await render("warm")  # a warm worker, so start-up time is not in the timing
    started = time.monotonic()
    runaway = asyncio.create_task(
        ex.run_step(step("runaway", "template", {"template": NESTED_LOOP}, 2.0))
    )
    await asyncio.sleep(0.3)
    # The event loop is free: another step (and another template) completes meanwhile.
    other = await ex.run_step(step("other", "sleep", {"seconds": 0.2}, 10))
    other_done = time.monotonic() - started
    fine = await ex.run_step(step("fine", "template", {"template": "{{ 6 * 7 }}"}, 10))
    out = await runaway
    elapsed = time.monotonic() - started
    assert isinstance(other, StepCompleted) and other_done < 2.0
    assert isinstance(fine, StepCompleted) and fine.output == {"text": "42"}
    assert isinstance(out, StepFailed)
    assert (out.error.type, out.error.error_class) == ("timeout", "retryable")
    assert elapsed < 6
    # Its worker was killed, not left burning CPU: the only live workers are idle ones.
    assert set(multiprocessing.active_children()) == {w.process for w in _renderer._idle}
    after = await render("{{ 1 + 1 }}")
    assert isinstance(after, StepCompleted) and after.output == {"text": "2"}

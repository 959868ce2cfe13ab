"""One provider's failures must not use up every task's retries: an open circuit
reports its retry-after, and recovery waits for it (real broker, real processes)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskSubmitted
from tests.conftest import stack_settings
from tests.support.router_db import task_history

pytestmark = pytest.mark.integration

TASKS = 100
COOLDOWN_S = 30.0  # the default, and the case reported: 100 of 100 tasks failed


async def test_an_open_circuit_delays_the_retries_instead_of_failing_every_task(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Five failures open the circuit for 30 s; each task's policy spends its eight
    # attempts in about 3 s of backoff. Every task fails once, on purpose, and should then succeed.
    env = {"PODIUM_BREAKER_FAILURES": "5", "PODIUM_BREAKER_COOLDOWN_S": str(COOLDOWN_S)}
    with Stack(stack_settings(kafka_bootstrap, tmp_path), env=env) as stack:
        tasks = [
            TaskSubmitted(task_id=f"brk{i}-{uuid.uuid4().hex[:8]}", workflow="recovery-breaker")
            for i in range(TASKS)
        ]
        async with PodiumClient(stack.settings) as client:
            for task in tasks:
                await client.submit(task)
            outcomes = await client.wait_for([t.task_id for t in tasks], 240)

        failed = [o for o in outcomes.values() if not isinstance(o, TaskCompleted)]
        assert not failed, f"{len(failed)} of {TASKS} tasks failed, e.g. {failed[0]}"
        attempts = [
            s.attempts for o in outcomes.values() if isinstance(o, TaskCompleted) for s in o.steps
        ]
        assert max(attempts) < 8, sorted(attempts)  # none near the end of its policy

        # The retries that met the open circuit waited for its next trial, not 50 ms.
        waited = []
        for task in tasks[:20]:
            for event in task_history(stack.settings, task.task_id)["history"]:
                if event["event"] == "retry_scheduled" and "is open" in event["cause"]:
                    waited.append(float(event["next"].rsplit(" in ", 1)[1].removesuffix("s")))
        assert waited and max(waited) > COOLDOWN_S / 2, waited

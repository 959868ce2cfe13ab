"""Idle consumers (issue 18) through the real broker and the real service processes:
on Tansu each consumer lengthens its fetch wait after a second without records
(podium_shared.idle); the first task after idleness must still run, late by at most
that wait on each hop."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskSubmitted

pytestmark = pytest.mark.integration

HOPS = 3  # a `hello`: tasks → router, steps → executor, step-results → router
SLACK_S = 5.0  # a loaded two-core machine; a stuck or runaway wait is seconds more


async def test_the_first_task_after_idleness_runs_within_the_idle_bound(stack: Stack) -> None:
    settings = stack.settings
    async with PodiumClient(settings) as client:
        warm = TaskSubmitted(task_id=uuid.uuid4().hex, workflow="hello", input={})
        await client.submit(warm)
        assert isinstance((await client.wait_for([warm.task_id], 60))[warm.task_id], TaskCompleted)
        # Not a wait for an event: idleness is the condition under test. 1 s of grace and
        # 1.25 s of doubling take every consumer on Tansu to its longest wait.
        await asyncio.sleep(3.0)
        first = TaskSubmitted(task_id=uuid.uuid4().hex, workflow="hello", input={})
        started = time.monotonic()
        await client.submit(first)
        outcome = (await client.wait_for([first.task_id], 60))[first.task_id]
        elapsed = time.monotonic() - started
    assert isinstance(outcome, TaskCompleted)
    bound_s = HOPS * max(settings.idle_fetch_max_wait_ms, settings.fetch_max_wait_ms) / 1000
    assert elapsed <= bound_s + SLACK_S, f"{elapsed:.2f} s after idleness (bound {bound_s} s)"

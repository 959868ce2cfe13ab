"""Over the real broker and processes: one tenant cannot wait on, take over or cancel
another's task by naming its id (issue 16, item 6).

Task ids are one namespace across tenants. Tenant B submitting A's task id used to be
ignored as a duplicate, and B's client, waiting on that id, read A's TaskCompleted
with A's output."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition

from podium.client import PodiumClient
from podium.stack import Stack
from podium.status import StatusError, task_history
from podium_contracts import TaskCompleted, TaskRejected, TaskSubmitted
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def events(stack: Stack, task_id: str) -> list[str]:
    """The task's history so far (nothing before the router stored it)."""
    try:
        return [e["event"] for e in task_history(stack.settings, task_id)["history"]]
    except StatusError:
        return []


async def read_past(client: PodiumClient, ends: dict[TopicPartition, int]) -> None:
    """Wait until ``client`` has read every task event up to ``ends``: from then on
    what it has not taken, it has seen and refused."""

    async def caught_up() -> bool:
        return all([await client.consumer.position(tp) >= end for tp, end in ends.items()])

    await wait_until(caught_up, 20, "the client reading the task events")


async def test_b_cannot_wait_on_take_over_or_cancel_as_task(stack: Stack) -> None:
    task_id = tid("tenant")
    mine = TaskSubmitted(
        task_id=task_id,
        workflow="test-slow",
        input={"seconds": 2, "secret": "a's data"},
        tenant="a",
    )
    theirs = TaskSubmitted(task_id=task_id, workflow="hello", input={"x": 1}, tenant="b")
    async with (
        PodiumClient(stack.settings, tenant="a") as a,
        PodiumClient(stack.settings, tenant="b") as b,
        PodiumClient(stack.settings, tenant="c") as c,
    ):
        await a.submit(mine)
        await wait_until(lambda: "step_dispatched" in events(stack, task_id), 15)

        await b.submit(theirs)
        rejected = (await b.wait_for([task_id], 20))[task_id]
        assert isinstance(rejected, TaskRejected), rejected
        assert (rejected.tenant, rejected.error.type) == ("b", "task_id_in_use")
        assert rejected.dlq is None and "a's data" not in rejected.error.message

        await b.cancel(task_id, reason="taking it over")
        await wait_until(lambda: "cancel_refused" in events(stack, task_id), 15)

        done = (await a.wait_for([task_id], 30))[task_id]
        assert isinstance(done, TaskCompleted), done
        assert (done.tenant, done.output) == ("a", {"seconds": 2.0})  # a's sleep, not b's echo
        history = events(stack, task_id)
        assert history.count("accepted") == 1 and history[-1] == "completed", history
        assert "cancelled" not in history

        # b, and c that only waits on the id, have read a's TaskCompleted off the topic
        # and taken it for neither.
        tps = list(c.consumer.assignment())
        ends = await c.consumer.end_offsets(tps)
        await read_past(b, ends)
        await read_past(c, ends)
        assert b.outcomes[task_id] is rejected
        assert task_id not in c.outcomes
        with pytest.raises(TimeoutError):
            await c.wait_for([task_id], 0.5)

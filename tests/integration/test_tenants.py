"""Over the real broker and processes: one tenant cannot wait on, take over or cancel
another's task by naming its id (issue 16, item 6).

Task ids are one namespace across tenants. Tenant B submitting A's task id used to be
ignored as a duplicate, and B's client, waiting on that id, read A's TaskCompleted
with A's output. The stack here binds tenants ``a`` and ``b`` to topics of their own
(PODIUM_TENANTS); tenants it does not name use the shared topics. That a tenant's
principal may not use another's topics is asserted against Kafka's ACLs in
test_kafka_secure.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskRejected, TaskSubmitted, decode
from podium_shared import Topics, dlq_headers
from tests.conftest import stack_settings
from tests.support.kafka import read_to_end
from tests.support.router_db import StatusError, task_history
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services, tenants a and b bound to topics of their own."""
    settings = stack_settings(kafka_bootstrap, tmp_path_factory.mktemp("tenants"), tenants="a,b")
    with Stack(settings) as s:
        yield s


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


@pytest.mark.parametrize(
    ("a", "b", "c"), [("a", "b", "c"), ("acme", "globex", "initech")], ids=["bound", "shared"]
)
async def test_b_cannot_wait_on_take_over_or_cancel_as_task(
    stack: Stack, a: str, b: str, c: str
) -> None:
    """Bound to their own topics (a, b) or on the shared ones, as claims (acme, globex)."""
    task_id = tid("tenant")
    mine = TaskSubmitted(
        task_id=task_id,
        workflow="test-slow",
        input={"seconds": 2, "secret": "a's data"},
        tenant=a,
    )
    theirs = TaskSubmitted(task_id=task_id, workflow="hello", input={"x": 1}, tenant=b)
    async with (
        PodiumClient(stack.settings, tenant=a) as a_client,
        PodiumClient(stack.settings, tenant=b) as b_client,
        PodiumClient(stack.settings, tenant=c) as c_client,
    ):
        assert a_client.bound == b_client.bound == (a == "a")
        await a_client.submit(mine)
        await wait_until(lambda: "step_dispatched" in events(stack, task_id), 15)

        await b_client.submit(theirs)
        rejected = (await b_client.wait_for([task_id], 20))[task_id]
        assert isinstance(rejected, TaskRejected), rejected
        assert (rejected.tenant, rejected.error.type) == (b, "task_id_in_use")
        assert rejected.dlq is None and "a's data" not in rejected.error.message

        await b_client.cancel(task_id, reason="taking it over")
        await wait_until(lambda: "cancel_refused" in events(stack, task_id), 15)

        done = (await a_client.wait_for([task_id], 30))[task_id]
        assert isinstance(done, TaskCompleted), done
        assert (done.tenant, done.output) == (a, {"seconds": 2.0})  # a's sleep, not b's echo
        history = events(stack, task_id)
        assert history.count("accepted") == 1 and history[-1] == "completed", history
        assert "cancelled" not in history

        # b, and c that only waits on the id, have read a's TaskCompleted off the topic
        # and taken it for neither.
        for client in (b_client, c_client):
            tps = list(client.consumer.assignment())
            await read_past(client, await client.consumer.end_offsets(tps))
        assert b_client.outcomes[task_id] is rejected
        assert task_id not in c_client.outcomes
        with pytest.raises(TimeoutError):
            await c_client.wait_for([task_id], 0.5)
    if a_client.bound:
        # b's own topic never carried anything of a's task: only b's rejection.
        topics = Topics(stack.settings.topic_prefix)
        records = await read_to_end(stack.bootstrap, topics.tenant_task_events("b"))
        b_saw = [decode(r.value, r.headers).payload for r in records]
        assert [(type(p).__name__, p.tenant) for p in b_saw if p.task_id == task_id] == [
            ("TaskRejected", "b")
        ]


async def test_a_claim_of_another_tenant_is_dead_lettered_and_answered_to_the_writer(
    stack: Stack,
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    task_id = tid("claim")
    async with PodiumClient(stack.settings, tenant="b") as b:
        await b.submit(TaskSubmitted(task_id=task_id, workflow="hello", tenant="a"))
        rejected = (await b.wait_for([task_id], 20))[task_id]
        unnamed = TaskSubmitted(task_id=tid("unnamed"), workflow="hello", input={"k": 1})
        await b.submit(unnamed)
        done = (await b.wait_for([unnamed.task_id], 20))[unnamed.task_id]
    assert isinstance(rejected, TaskRejected), rejected
    assert (rejected.tenant, rejected.error.type) == ("b", "tenant_mismatch")
    assert "claims tenant 'a'" in rejected.error.message
    dlq = topics.dlq(topics.tenant_tasks("b"))
    assert rejected.dlq is not None and rejected.dlq.topic == dlq
    [dead] = [r for r in await read_to_end(stack.bootstrap, dlq) if r.key == task_id.encode()]
    assert dlq_headers(dead.headers)["reason"] == "tenant_mismatch"
    assert events(stack, task_id) == []  # nothing ran
    # a submission that names no tenant is the topic's
    assert isinstance(done, TaskCompleted) and done.tenant == "b"

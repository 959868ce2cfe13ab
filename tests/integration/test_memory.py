"""Memory through the real broker and the real service processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from podium.client import Outcome, PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskFailed, TaskSubmitted
from podium_memory.state import entries
from podium_shared import Topics
from podium_shared.runtime import ready_file
from tests.conftest import stack_settings
from tests.support.kafka import partitions_of
from tests.support.waiting import wait_until
from tests.unit.test_memory_store import HOSTILE

pytestmark = pytest.mark.integration

PROJECT_TTL_S = 3.0


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services, with a short project TTL and a fast purge for the retention test."""
    home = tmp_path_factory.mktemp("podium-memory-home")
    env = {
        "PODIUM_MEMORY_TTL_PROJECT_S": str(PROJECT_TTL_S),
        "PODIUM_MEMORY_PURGE_INTERVAL_S": "0.5",
    }
    with Stack(stack_settings(kafka_bootstrap, home), env=env) as s:
        yield s


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run_all(stack: Stack, tasks: list[TaskSubmitted], timeout_s: float = 60) -> list[Outcome]:
    async with PodiumClient(stack.settings) as client:
        for t in tasks:
            await client.submit(t)
        outcomes = await client.wait_for([t.task_id for t in tasks], timeout_s)
    return [outcomes[t.task_id] for t in tasks]


async def run(stack: Stack, workflow: str, input: dict[str, Any], **kw: Any) -> Any:
    """Run one task and return its output; a failed task fails the test."""
    [outcome] = await run_all(stack, [task(workflow, input, **kw)])
    assert isinstance(outcome, TaskCompleted), outcome
    return outcome.output


def task(workflow: str, input: dict[str, Any], **kw: Any) -> TaskSubmitted:
    return TaskSubmitted(task_id=uid(workflow), workflow=workflow, input=input, **kw)


async def recall(stack: Stack, tenant: str, subject: str | None = "ada", **input: Any) -> list[str]:
    output = await run(stack, "memory-recall", input, tenant=tenant, subject=subject)
    return [e["text"] for e in output["entries"]]


async def step_output(stack: Stack, task_id: str, step_id: str, timeout_s: float = 20) -> Any:
    """The output a step reported on the step-results topic."""
    topic = Topics(stack.settings.topic_prefix).step_results
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        parts = await partitions_of(consumer, topic, deadline)
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    body = orjson.loads(r.value)
                    if body.get("task_id") == task_id and body.get("step_id") == step_id:
                        return body["output"]
        raise TimeoutError(f"no result for {task_id}/{step_id}")
    finally:
        await consumer.stop()


async def stored_entries(stack: Stack, where: Any) -> list[Any]:
    """Rows of the memory service's own database, read as an operator would."""
    engine = sa.create_engine(stack.settings.database_url("memory"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(entries).where(where)).all())
    finally:
        engine.dispose()


async def eventually(probe: Any, timeout_s: float = 15) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_the_second_run_recalls_what_the_first_remembered(stack: Stack) -> None:
    tenant = uid("tenant")
    first = task("memory-two-run", {}, tenant=tenant, subject="ada")
    second = task("memory-two-run", {}, tenant=tenant, subject="ada")
    [done] = await run_all(stack, [first])
    assert isinstance(done, TaskCompleted)
    # The episode is recorded from the task-events topic, concurrently with our next submit.
    key = f"episode:{first.task_id}"
    assert await eventually(lambda: stored_entries(stack, entries.c.idempotency_key == key))
    [done] = await run_all(stack, [second])
    assert isinstance(done, TaskCompleted)
    assert (await step_output(stack, first.task_id, "recall")) == {"entries": []}
    recalled = (await step_output(stack, second.task_id, "recall"))["entries"]
    assert [e["text"] for e in recalled if e["type"] == "fact"] == ["the favourite colour is teal"]
    [episode] = [e for e in recalled if e["type"] == "episode"]
    assert episode["scope"] == {"kind": "workflow", "id": "memory-two-run"}
    assert episode["metadata"]["task_id"] == first.task_id
    assert episode["metadata"]["outcome"] == "completed"
    assert [s["step_id"] for s in episode["metadata"]["steps"]] == ["recall", "remember"]


async def test_tenant_b_never_sees_tenant_a(stack: Stack) -> None:
    a, b = uid("tenant-a"), uid("tenant-b")
    secret = "the launch code of acme is zebra"
    await run(stack, "memory-remember", {"text": secret}, tenant=a, subject="ada")
    await run(
        stack,
        "memory-remember",
        {"text": secret, "scope": {"kind": "project", "id": "p1"}},
        tenant=a,
        subject="ada",
    )
    await run(
        stack,
        "memory-conversation",
        {"session": "s1", "append": {"text": secret}},
        tenant=a,
        subject="ada",
    )
    probes = [
        task("memory-recall", {"query": q, "limit": 100}, tenant=b, subject="ada")
        for q in [*HOSTILE, "launch code zebra", ""]
    ]
    probes += [
        task(
            "memory-recall",
            {"query": "zebra", "scopes": [{"kind": "project", "id": "p1"}]},
            tenant=b,
            subject="ada",
        ),
        task(
            "memory-recall",
            {"query": "zebra", "scopes": [{"kind": "session", "id": "s1"}]},
            tenant=b,
            subject="ada",
        ),
        task("memory-conversation", {"session": "s1"}, tenant=b, subject="ada"),
        task("memory-forget", {"ids": list(range(1, 200))}, tenant=b, subject="ada"),
    ]
    refused = [
        task("memory-forget", {"tenant": a}, tenant=b, subject="ada"),
        task(
            "memory-recall",
            {"scopes": [{"kind": "subject", "id": "mallory"}]},
            tenant=a,
            subject="ada",
        ),
    ]
    outcomes = await run_all(stack, probes + refused)
    for probe, outcome in zip(probes, outcomes[: len(probes)], strict=True):
        # An over-long query is refused as invalid input; nothing else may fail.
        if isinstance(outcome, TaskFailed):
            assert outcome.error.type == "invalid_input", outcome
            assert len(probe.input.get("query", "")) > 4_000
            continue
        assert "zebra" not in orjson.dumps(outcome.output).decode(), (probe.input, outcome.output)
    forget_by_id = outcomes[len(probes) - 1]
    assert isinstance(forget_by_id, TaskCompleted) and forget_by_id.output == {"forgotten": 0}
    for outcome in outcomes[len(probes) :]:
        assert isinstance(outcome, TaskFailed) and outcome.error.type == "forbidden", outcome
    assert await recall(stack, a, query="zebra") == [secret]


async def test_forget_by_tenant_erases_everything_and_recall_proves_it(stack: Stack) -> None:
    gone, kept = uid("tenant-gone"), uid("tenant-kept")
    project = {"kind": "project", "id": "p1"}
    for tenant in (gone, kept):
        await run(
            stack, "memory-remember", {"text": "a fact about ada"}, tenant=tenant, subject="ada"
        )
        await run(
            stack,
            "memory-remember",
            {"text": "a fact about p1", "scope": project},
            tenant=tenant,
            subject="ada",
        )
        await run(
            stack,
            "memory-conversation",
            {"session": "s", "window": 1, "append": {"text": "first fact turn."}},
            tenant=tenant,
            subject="ada",
        )
        await run(
            stack,
            "memory-conversation",
            {"session": "s", "window": 1, "append": {"text": "second fact turn."}},
            tenant=tenant,
            subject="ada",
        )
    before = task("memory-recall", {"query": "fact"}, tenant=gone, subject="ada")
    [found] = await run_all(stack, [before])
    assert isinstance(found, TaskCompleted)
    assert [e["text"] for e in found.output["entries"]] == ["a fact about ada"]
    # Its episode (which quotes the fact) is recorded from task-events, in its own time: a
    # forget that overtook it would leave it for the recall below to find.
    key = f"episode:{before.task_id}"
    assert await eventually(lambda: stored_entries(stack, entries.c.idempotency_key == key))
    forgotten = await run(stack, "memory-forget", {"tenant": gone}, tenant=gone, subject="ada")
    assert forgotten["forgotten"] >= 4  # the facts and turns, and the episodes recorded so far
    everywhere = [
        {"kind": "subject"},
        project,
        {"kind": "session", "id": "s"},
        {"kind": "workflow"},
    ]
    assert await recall(stack, gone, query="fact", scopes=everywhere, limit=100) == []
    # (new tasks of the tenant make new episodes: so from here on, facts and turns only)
    mine = ["fact", "turn"]
    assert await recall(stack, gone, query="", scopes=everywhere, types=mine, limit=100) == []
    conversation = await run(
        stack, "memory-conversation", {"session": "s"}, tenant=gone, subject="ada"
    )
    assert conversation["turns"] == [] and conversation["summary"] == ""
    # kept's project fact is left out: this module's project TTL (3 s) is shorter than this
    # test on a loaded machine, and the fact expiring on time made this count 3, not 4.
    lasting = [s for s in everywhere if s != project]
    assert await recall(stack, kept, query="", scopes=lasting, types=mine, limit=100) == [
        "second fact turn.",
        "first fact turn.",
        "a fact about ada",
    ]


async def test_entries_expire_at_their_ttl_and_are_purged(stack: Stack) -> None:
    tenant = uid("tenant-ttl")
    project = [{"kind": "project", "id": "short"}]
    await run(
        stack,
        "memory-remember",
        {"text": "a short lived fact", "scope": project[0]},
        tenant=tenant,
        subject="ada",
    )
    await run(stack, "memory-remember", {"text": "a lasting fact"}, tenant=tenant, subject="ada")
    assert await recall(stack, tenant, query="fact", scopes=project) == ["a short lived fact"]

    async def expired() -> bool:
        return await recall(stack, tenant, query="fact", scopes=project) == []

    assert await eventually(expired, timeout_s=PROJECT_TTL_S + 15)
    assert await recall(stack, tenant, query="fact") == ["a lasting fact"]

    async def purged() -> bool:
        rows = await stored_entries(
            stack, sa.and_(entries.c.tenant == tenant, entries.c.type == "fact")
        )
        return [r.text for r in rows] == ["a lasting fact"]

    assert await eventually(purged, 10)  # the background purge deleted the expired row


async def test_the_conversation_window_and_its_running_summary(stack: Stack) -> None:
    tenant = uid("tenant-chat")
    said = [
        ("user", "My name is Ada. I write programs."),
        ("assistant", "Nice to meet you, Ada!"),
        ("user", "Remind me to call Charles tomorrow."),
        ("assistant", "Reminder set for tomorrow."),
        ("user", "Thanks."),
    ]
    out: dict[str, Any] = {}
    for role, text in said:
        out = await run(
            stack,
            "memory-conversation",
            {"session": "chat-1", "window": 2, "append": {"role": role, "text": text}},
            tenant=tenant,
            subject="ada",
        )
    assert [(t["role"], t["text"]) for t in out["turns"]] == said[3:]
    assert out["summary"] == (
        "user: My name is Ada.\nassistant: Nice to meet you, Ada!\n"
        "user: Remind me to call Charles tomorrow."
    )
    assert out["folded_turns"] == 3
    read = await run(
        stack,
        "memory-conversation",
        {"session": "chat-1", "window": 2},
        tenant=tenant,
        subject="ada",
    )
    assert read == out
    other = await run(
        stack,
        "memory-conversation",
        {"session": "chat-1", "window": 2},
        tenant=tenant,
        subject="bob",
    )
    assert other["turns"] == [] and other["summary"] == ""


async def test_killed_with_sigkill_and_restarted_memory_loses_nothing_acknowledged(
    stack: Stack,
) -> None:
    tenant = uid("tenant-kill")
    texts = [f"durable fact number {i}" for i in range(40)]
    tasks = [task("memory-remember", {"text": t}, tenant=tenant, subject="ada") for t in texts]
    memory = next(p for p in stack.processes if p.name == "memory")
    async with PodiumClient(stack.settings) as client:
        for t in tasks[:20]:
            await client.submit(t)
        acknowledged = await client.wait_for([t.task_id for t in tasks[:5]], 30)
        for t in tasks[20:]:
            await client.submit(t)
        stack.kill(memory)  # SIGKILL, mid-stream
        stack.processes.remove(memory)
        ready_file(stack.settings, "memory").unlink(missing_ok=True)
        stack.spawn("memory")
        await asyncio.to_thread(stack.wait_ready, 60)
        outcomes = await client.wait_for([t.task_id for t in tasks], 90)
    assert len(acknowledged) == 5
    assert all(isinstance(o, TaskCompleted) for o in outcomes.values())
    ids = {o.output["id"] for o in outcomes.values() if isinstance(o, TaskCompleted)}
    assert len(ids) == len(texts)  # one entry per task, none doubled by redelivery
    stored = await recall(stack, tenant, query="", limit=100)
    assert sorted(stored) == sorted(texts)


def same_partition_as(task_id: str, prefix: str, partitions: int = 4) -> str:
    """A new task id whose task events land in ``task_id``'s partition of task-events
    (keyed by task id, aiokafka's murmur2 partitioner, 4 partitions: podium_shared.topics)."""

    def partition(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions

    while True:
        candidate = uid(prefix)
        if partition(candidate) == partition(task_id):
            return candidate


async def test_a_task_that_runs_no_memory_step_leaves_no_episode(stack: Stack) -> None:
    # issue 18: memory used to record an episode of every task with a tenant, at a
    # transaction each, though only the workflow's own memory steps could ever read it.
    tenant = uid("tenant")
    plain = task("hello", {"i": 1}, tenant=tenant, subject="ada")
    [done] = await run_all(stack, [plain])
    assert isinstance(done, TaskCompleted)
    # A memory task whose events follow the plain task's in the same partition: once its
    # episode is stored, memory has read past the plain task's TaskCompleted.
    after = task("memory-recall", {"query": ""}, tenant=tenant, subject="ada").model_copy(
        update={"task_id": same_partition_as(plain.task_id, "memory-recall")}
    )
    [done] = await run_all(stack, [after])
    assert isinstance(done, TaskCompleted)

    async def recorded() -> bool:
        key = f"episode:{after.task_id}"
        return bool(await stored_entries(stack, entries.c.idempotency_key == key))

    await wait_until(recorded, 30, "the memory task's episode")
    assert (
        await stored_entries(stack, entries.c.idempotency_key == f"episode:{plain.task_id}") == []
    )

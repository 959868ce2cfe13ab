"""One task end to end through the real broker and the four real service processes."""

from __future__ import annotations

import uuid

import orjson
import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import (
    DLQ_HEADER_PREFIX,
    TaskCompleted,
    TaskFailed,
    TaskHistoryRecorded,
    TaskSubmitted,
    encode,
)
from podium_shared import Topics, dlq_headers
from tests.support.kafka import committed_offsets, read_topic
from tests.support.router_db import task_status

pytestmark = pytest.mark.integration


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_hello_task_completes_with_its_input_as_output(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("hello"), workflow="hello", input={"text": "hi", "n": 3})
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {"text": "hi", "n": 3}
    assert [(s.step_id, s.capability, s.pool, s.attempts) for s in outcome.steps] == [
        ("echo", "echo", "default", 1)
    ]
    assert task_status(stack.settings, task.task_id)["status"] == "completed"


async def test_steps_in_sequence_and_on_the_memory_pool(stack: Stack) -> None:
    chain = TaskSubmitted(task_id=tid("chain"), workflow="test-chain", input={"x": 1})
    mem = TaskSubmitted(task_id=tid("mem"), workflow="test-memory", subject="ada")
    async with PodiumClient(stack.settings) as client:
        await client.submit(chain)
        await client.submit(mem)
        outcomes = await client.wait_for([chain.task_id, mem.task_id], 30)
    done = outcomes[chain.task_id]
    assert isinstance(done, TaskCompleted)
    assert done.output == {"seconds": 0.01, "note": "second"}
    assert [s.step_id for s in done.steps] == ["first", "second"]
    recalled = outcomes[mem.task_id]
    assert isinstance(recalled, TaskCompleted), recalled
    assert [e["text"] for e in recalled.output["entries"]] == ["the sky is green on tuesdays"]


async def test_duplicate_submission_yields_one_run(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("dup"), workflow="hello", input={"k": "v"})
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        await client.submit(task)  # a new ce_id, the same task_id: a client retry
        # and the very same record twice: a producer retry
        value, headers = encode(task, source="test")
        await client.submit_raw(value, headers, key=task.task_id.encode())
        await client.submit_raw(value, headers, key=task.task_id.encode())
        await client.wait_for([task.task_id], 30)
        # a later task on the same partition proves the duplicates were consumed
        after = TaskSubmitted(task_id=tid("after"), workflow="hello")
        await client.submit(after)
        await client.wait_for([after.task_id], 30)
    events = await read_topic(
        stack.bootstrap, Topics(stack.settings.topic_prefix).task_events, at_least=1
    )
    mine = [orjson.loads(r.value) for r in events if r.key == task.task_id.encode()]
    kinds = sorted(
        dict(r.headers)["ce_type"].decode() for r in events if r.key == task.task_id.encode()
    )
    # Beside its history entries (one per entry the router wrote), one of each outcome.
    outcomes = [k for k in kinds if k != TaskHistoryRecorded.CE_TYPE]
    assert outcomes == ["podium.task.accepted.v1", "podium.task.completed.v1"], mine
    # accepted, step dispatched, step completed, completed: the repeats added none.
    assert kinds.count(TaskHistoryRecorded.CE_TYPE) == 4, mine
    assert task_status(stack.settings, task.task_id)["steps"][0]["attempts"] == 1


async def test_unknown_workflow_fails_the_task_clearly(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("nowf"), workflow="no-such-workflow")
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskFailed)
    assert outcome.error.type == "unknown_workflow"
    assert "no-such-workflow" in outcome.error.message and "hello" in outcome.error.message


async def test_failed_step_reaches_recovery_and_the_task_fails_naming_the_dlq(
    stack: Stack,
) -> None:
    task = TaskSubmitted(task_id=tid("fail"), workflow="test-fails")
    topics = Topics(stack.settings.topic_prefix)
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskFailed)
    assert outcome.error.type == "unknown_capability" and outcome.error.step_id == "missing"
    assert outcome.dlq is not None and outcome.dlq.topic == topics.dlq(topics.steps("default"))
    records = await read_topic(stack.bootstrap, outcome.dlq.topic, at_least=1)
    record = next(r for r in records if dict(r.headers)["ce_id"].decode() == outcome.dlq.record_id)
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "step_abandoned" and meta["service"] == "recovery"
    assert meta["task-id"] == task.task_id and meta["error-type"] == "unknown_capability"
    assert orjson.loads(record.value)["capability"] == "no-such-capability"


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"{not json", [("ce_type", b"podium.task.submitted.v1")], "undecodable"),
        (
            b'{"task_id": "x", "workflow": "hello"}',
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"poison-v9"),
                ("ce_source", b"test"),
                ("ce_type", b"podium.task.submitted.v9"),
            ],
            "unknown_type",
        ),
        (
            b'{"workflow": "hello"}',
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"poison-invalid"),
                ("ce_source", b"test"),
                ("ce_type", b"podium.task.submitted.v1"),
            ],
            "invalid",
        ),
    ],
    ids=["malformed", "unknown-version", "invalid"],
)
async def test_poison_goes_to_the_dlq_untouched_and_the_next_task_completes(
    stack: Stack, value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    key = b"poison-" + marker
    headers = [*headers, ("x-test-marker", marker)]
    task = TaskSubmitted(task_id=tid("next"), workflow="hello", input={"after": reason})
    async with PodiumClient(stack.settings) as client:
        await client.submit_raw(value, headers, key=key)
        # Same key, so the same partition: the next task must not be stalled behind the poison.
        await client.submit_raw(*encode(task, source="test"), key=key)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted)

    dlq = await read_topic(stack.bootstrap, topics.dlq(topics.tasks), at_least=1)
    record = next(r for r in dlq if dict(r.headers).get("x-test-marker") == marker)
    assert record.value == value and record.key == key
    original = [(k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)]
    assert original == headers
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == reason
    assert meta["original-topic"] == topics.tasks
    assert meta["service"] == "router"
    assert meta["error-message"] and meta["error-type"] and meta["time"]
    assert int(meta["original-offset"]) >= 0 and int(meta["original-partition"]) >= 0
    # The poison's offset is committed, so a restart does not read it again.
    committed = await committed_offsets(stack.bootstrap, topics.group("router"), topics.tasks)
    assert committed[int(meta["original-partition"])] > int(meta["original-offset"])

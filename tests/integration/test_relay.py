"""Hostile and large records against the real processes: none may wedge a
service's outbox relay, and none is dropped without a trace (issue 12, items 1
and 2). Each test ends with an ordinary task that must complete: a relay stuck
on a row it cannot send would hold back that task's messages forever."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskFailed, TaskSubmitted, encode
from podium_shared import Topics, dlq_headers, make_engine
from podium_shared.blobs import read
from podium_shared.dlq import original_record
from podium_shared.limits import MAX_RECORD_BYTES, record_size
from podium_shared.outbox import OutgoingMessage, write_outbox
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def send_hostile(
    stack: Stack, topic: str, key: bytes | None, value: bytes | None, marker: bytes
) -> None:
    """Publish as an outside client would, with a producer that allows 16 MiB records."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=16 * MiB)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key, headers=[("x-marker", marker)])
    finally:
        await producer.stop()


TOMBSTONE = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

async def main() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1])
    await producer.start()
    try:
        await producer.send_and_wait(
            sys.argv[2], value=None, key=None, headers=[("x-marker", sys.argv[3].encode())]
        )
    finally:
        await producer.stop()

asyncio.run(main())
"""


def send_null_key_tombstone(stack: Stack, topic: str, marker: bytes) -> None:
    """A record with neither key nor value, which Java and librdkafka clients send;
    aiokafka refuses it only by an ``assert``, so run it with assertions off."""
    subprocess.run(
        [sys.executable, "-O", "-c", TOMBSTONE, stack.bootstrap, topic, marker.decode()],
        check=True,
        timeout=60,
    )


async def completes(stack: Stack) -> None:
    """An ordinary task still completes: nothing is wedged behind the hostile record."""
    task = TaskSubmitted(task_id=tid("after"), workflow="hello", input={"ok": True})
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted), outcome


async def dead_letter_of(
    stack: Stack, topic: str, marker: bytes
) -> tuple[ConsumerRecord[bytes, bytes], dict[str, str]]:
    records = await read_topic(stack.bootstrap, Topics.dlq(topic), at_least=1, timeout_s=30)
    found = [r for r in records if dict(r.headers).get("x-marker") == marker]
    assert found, f"no dead letter with marker {marker!r} on {Topics.dlq(topic)}"
    return found[0], dlq_headers(list(found[0].headers))


async def test_a_null_key_tombstone_is_dead_lettered_and_blocks_nothing(stack: Stack) -> None:
    topics = Topics(stack.settings.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    await asyncio.to_thread(send_null_key_tombstone, stack, topics.tasks, marker)
    await completes(stack)
    record, meta = await dead_letter_of(stack, topics.tasks, marker)
    assert meta["reason"] == "undecodable" and meta["value-null"] == "true"
    assert record.key is None and record.value == b""
    # A replay puts the tombstone back as it was.
    assert original_record(record.key, record.value, list(record.headers))[:2] == (None, None)


@pytest.mark.parametrize(
    ("topic_of", "size"),
    [
        (lambda t: t.tasks, MAX_RECORD_BYTES - 200),  # fits; its DLQ copy would not
        (lambda t: t.tasks, 10 * MiB),
        (lambda t: t.steps("default"), MAX_RECORD_BYTES - 200),  # the executor's relay
    ],
    ids=["1MiB-task", "10MiB-task", "1MiB-step"],
)
async def test_a_record_too_large_to_dead_letter_keeps_its_body_aside(
    stack: Stack, topic_of: Callable[[Topics], str], size: int
) -> None:
    topic = topic_of(Topics(stack.settings.topic_prefix))
    marker = uuid.uuid4().hex.encode()
    body = os.urandom(size // 2).hex().encode()[:size]  # not JSON: undecodable
    key = b"big-" + marker
    if stack.settings.broker == "kafka" and size > MAX_RECORD_BYTES:
        # Apache Kafka enforces message.max.bytes (1 MiB): the record never enters, and
        # its producer is told so; podium never sees it. (Tansu accepts it.)
        with pytest.raises(MessageSizeTooLargeError):
            await send_hostile(stack, topic, key, body, marker)
        await completes(stack)
        return
    await send_hostile(stack, topic, key, body, marker)
    await completes(stack)
    record, meta = await dead_letter_of(stack, topic, marker)
    assert meta["reason"] == "undecodable" and meta["original-topic"] == topic
    assert record.value == b"" and record.key == key
    assert int(meta["value-bytes"]) == size
    assert meta["value-sha256"] == hashlib.sha256(body).hexdigest()
    assert read(meta["value-ref"]) == body
    assert record_size(key, b"", list(record.headers)) <= MAX_RECORD_BYTES
    # Replay sends the original body, headers and key again.
    k, v, headers = original_record(record.key, record.value, list(record.headers))
    assert (k, v, headers) == (key, body, [("x-marker", marker)])


async def test_a_row_the_relay_can_never_send_is_parked_and_listed(stack: Stack) -> None:
    """A row no producer accepts (no key, no value) planted in the router's outbox:
    the relay parks it, sends the rest, counts it and names it in `podium outbox`."""
    topic = f"{stack.settings.topic_prefix}.planted.v1"
    engine = make_engine(stack.settings.database_url("router"))
    with engine.begin() as conn:
        write_outbox(conn, [OutgoingMessage(topic, None, None, [("ce_id", b"planted")])])
    engine.dispose()
    await completes(stack)

    out = subprocess.run(
        [sys.executable, "-m", "podium", "outbox", "parked", "--json"],
        env={**os.environ, "PODIUM_HOME": str(stack.settings.home)},
        capture_output=True,
        check=True,
        timeout=60,
    )
    listed = orjson.loads(out.stdout)["parked"]
    planted = [r for r in listed if r["topic"] == topic]
    assert len(planted) == 1, listed
    assert planted[0]["service"] == "router" and planted[0]["ce_id"] == "planted"
    assert planted[0]["error_type"] == "AssertionError"
    assert "key or value" in planted[0]["error"]

    router = next(p for p in stack.processes if p.name == "router")
    url = router.metrics_url
    assert url is not None
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    line = f'podium_outbox_parked_total{{error_type="AssertionError",topic="{topic}"}} 1.0'
    assert line in text
    log = router.log_path.read_text(errors="replace")
    assert "outbox row parked" in log and topic in log


async def _fails_too_large(stack: Stack, task: TaskSubmitted) -> TaskFailed:
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 45))[task.task_id]
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.error.type == "too_large", outcome.error
    return outcome


async def test_a_valid_task_whose_step_input_outgrows_a_record_fails_too_large(
    stack: Stack,
) -> None:
    text = "x" * 600_000  # 600 KB in, a 1.2 MB StepRequested out
    task = TaskSubmitted(task_id=tid("double"), workflow="too-large-double", input={"text": text})
    value, _ = encode(task, source="test")
    assert len(value) < MAX_RECORD_BYTES
    failed = await _fails_too_large(stack, task)
    assert failed.error.step_id == "twice" and "over the limit" in failed.error.message
    await completes(stack)


async def test_a_template_that_multiplies_a_list_fails_too_large(stack: Stack) -> None:
    task = TaskSubmitted(
        task_id=tid("multiply"),
        workflow="too-large-multiply",
        input={"items": ["abcdefghij"], "times": 500_000},
    )
    failed = await _fails_too_large(stack, task)
    assert failed.error.step_id == "many"
    await completes(stack)


async def test_a_task_over_the_input_limit_fails_too_large(stack: Stack) -> None:
    """As large a task as a client can send: its TaskCompleted (the same output plus
    the step list and timestamps) could not be."""
    task = TaskSubmitted(task_id=tid("huge"), workflow="hello", input={"text": "y" * 1_047_900})
    value, headers = encode(task, source="podium-cli")
    assert record_size(task.task_id.encode(), value, headers) < MAX_RECORD_BYTES - 100
    failed = await _fails_too_large(stack, task)
    assert "the task's input" in failed.error.message
    await completes(stack)


async def test_a_step_output_over_the_limit_fails_its_task_too_large(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("output"), workflow="too-large-output")
    failed = await _fails_too_large(stack, task)
    assert failed.error.step_id == "render" and "output" in failed.error.message
    await completes(stack)

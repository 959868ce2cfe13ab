"""Recovery through the real broker and the real service processes: retries with
backoff, fallbacks, dead letters, replay with `podium dlq`, and a kill -9."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import DLQ_HEADER_PREFIX, DlqHeader, TaskCompleted, TaskFailed, TaskSubmitted
from podium_recovery.state import timers
from podium_shared import Topics, dlq_headers
from podium_shared.dlq_records import read_records
from podium_shared.dlq_replay import Filters, replay, select, send_all
from podium_shared.kafka import ensure_topics, make_consumer, make_producer
from podium_shared.topics import TopicSpec
from tests.conftest import stack_settings
from tests.support.api_runs import until_api_sees
from tests.support.kafka import committed_offsets, read_topic
from tests.support.router_db import task_history, task_status
from tests.support.waiting import outbox_empty, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services with an executor on "default" and one on "backup". The
    drills fail on purpose, so the executors' circuit breakers stay out of the way."""
    home = tmp_path_factory.mktemp("podium-recovery")
    settings = stack_settings(kafka_bootstrap, home)
    env = {"PODIUM_BREAKER_FAILURES": "1000"}
    # The api too: `podium dlq list` reads the summaries from it, as `podium up` runs it.
    with Stack(settings, pools=("default", "backup"), env=env, api=True) as s:
        s.operator_token()
        yield s


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Recording:
    """A producer that keeps the futures of what it sent: where each record landed."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self.sent: list[asyncio.Future[RecordMetadata]] = []

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[RecordMetadata]:
        future = await self._producer.send(topic, **kwargs)
        self.sent.append(future)
        return future


def podium(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI against the stack."""
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        env=stack.child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def waits(history: list[dict[str, Any]]) -> list[float]:
    """The backoff the router was told about, from each retry_scheduled event."""
    out = []
    for e in history:
        if e["event"] == "retry_scheduled":
            m = re.search(r" in (\d+\.\d)s$", e["next"])
            assert m, e
            out.append(float(m.group(1)))
    return out


async def test_a_flaky_step_succeeds_after_retries_with_backoff_in_the_history(
    stack: Stack,
) -> None:
    task = TaskSubmitted(
        task_id=tid("flaky"), workflow="recovery-flaky", input={"fail_attempts": 2}
    )
    async with PodiumClient(stack.settings) as client:
        started = time.monotonic()
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
        elapsed = time.monotonic() - started
    assert isinstance(outcome, TaskCompleted), outcome
    assert [(s.step_id, s.attempts) for s in outcome.steps] == [("wobbly", 3)]

    info = task_history(stack.settings, task.task_id)
    events = [e["event"] for e in info["history"]]
    assert events.count("retry_scheduled") == 2, events
    first, second = waits(info["history"])
    # equal jitter on 0.3 s doubling: [0.15, 0.3] then [0.3, 0.6] (rounded to 0.1 s)
    assert 0.1 <= first <= 0.3 and 0.2 <= second <= 0.6, (first, second)
    retries = [e for e in info["history"] if e["event"] == "retry_scheduled"]
    assert [e["attempt"] for e in retries] == [2, 3]
    assert "attempt 1 failed: unavailable" in retries[0]["cause"]
    assert elapsed >= 0.45  # the backoff really was waited


async def test_a_fatal_error_is_dead_lettered_at_once(stack: Stack) -> None:
    topics = Topics(stack.settings.topic_prefix)
    task = TaskSubmitted(task_id=tid("fatal"), workflow="recovery-fatal")
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.error.step_id == "doomed" and "no retry can help" in outcome.error.message
    assert outcome.dlq is not None and outcome.dlq.topic == topics.dlq(topics.steps("default"))
    info = task_history(stack.settings, task.task_id)
    assert "retry_scheduled" not in [e["event"] for e in info["history"]]
    assert info["steps"][0]["attempts"] == 1

    records = await read_topic(stack.bootstrap, outcome.dlq.topic, at_least=1)
    record = next(r for r in records if dict(r.headers)["ce_id"].decode() == outcome.dlq.record_id)
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "step_abandoned" and meta["error-class"] == "fatal"
    assert meta["abandoned"] == "fatal" and meta["attempts"] == "1"
    assert meta["task-id"] == task.task_id and meta["step-id"] == "doomed"
    assert meta["original-topic"] == topics.steps("default")


async def test_exhausted_retries_fall_back_then_dead_letter_and_replay_completes_once(
    stack: Stack, tmp_path: Path
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    effects, fixed = tmp_path / "effects.jsonl", tmp_path / "fixed"
    task = TaskSubmitted(
        task_id=tid("fallback"),
        workflow="recovery-fallback",
        input={"path": str(effects), "fixed": str(fixed)},
    )
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        failed = (await client.wait_for([task.task_id], 30))[task.task_id]
        assert isinstance(failed, TaskFailed), failed
        backup_dlq = topics.dlq(topics.steps("backup"))
        assert failed.dlq is not None and failed.dlq.topic == backup_dlq
        assert failed.error.step_id == "shaky" and "3 attempt(s) failed" in failed.error.message
        history = task_history(stack.settings, task.task_id)["history"]
        retries = [(e["attempt"], e["pool"]) for e in history if e["event"] == "retry_scheduled"]
        assert retries == [(2, "backup"), (3, "backup")]

        # The record the task names, as an operator sees it.
        shown = podium(stack, "dlq", "show", backup_dlq, "--task", task.task_id, "--json")
        assert shown.returncode == 0, shown.stderr
        (record,) = orjson.loads(shown.stdout)
        assert record["id"] == failed.dlq.record_id and record["error_class"] == "retryable"
        assert record["payload"]["pool"] == "backup" and record["payload"]["attempt"] == 3

        # Fix the fault; replay twice at once (a second operator, a retried command).
        fixed.touch()
        client.outcomes.pop(task.task_id)
        args = ("dlq", "replay", backup_dlq, "--task", task.task_id, "--json")
        first, second = await asyncio.gather(
            asyncio.to_thread(podium, stack, *args), asyncio.to_thread(podium, stack, *args)
        )
        reports = []
        for run in (first, second):
            assert run.returncode == 0, run.stderr
            reports.append(orjson.loads(run.stdout))
        # Whichever came second either sent the same record again (the executor's
        # inbox drops it) or already saw the task completed and skipped it.
        assert sorted(r["replayed"] for r in reports)[-1] == 1
        for r in reports:
            assert r["replayed"] == 1 or r["skipped_by_reason"] == {"task already completed": 1}
        done = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(done, TaskCompleted), done
    assert done.output["value"] == "after"
    assert task_status(stack.settings, task.task_id)["status"] == "completed"

    # Once the task completed (the api, which replays, has heard it), another replay is
    # skipped and says why.
    await until_api_sees(stack, [task.task_id], ["completed"])
    third = podium(stack, "dlq", "replay", backup_dlq, "--task", task.task_id, "--json")
    report = orjson.loads(third.stdout)
    assert (report["replayed"], report["skipped_by_reason"]) == (
        0,
        {"task already completed": 1},
    )
    # And a replay that ignores task state (the record's own bytes once more) runs nothing:
    # the executor's inbox has its ce_id.
    consumer = make_consumer(stack.settings, group_id=None, client_id="test-replay")
    producer = make_producer(stack.settings, client_id="test-replay")
    await consumer.start()
    await producer.start()
    sending = Recording(producer)
    try:
        records = select(await read_records(consumer, backup_dlq), Filters(task=task.task_id))
        forced = await replay(sending, backup_dlq, records, states={})  # type: ignore[arg-type]
        assert len(forced.replayed) == 1
        (sent,) = [await f for f in sending.sent]
    finally:
        await consumer.stop()
        await producer.stop()

    # The backup executor has handled the replayed record once its group committed past it.
    async def consumed() -> bool:
        group = f"{stack.settings.topic_prefix}-executor-backup"
        committed = await committed_offsets(stack.bootstrap, group, sent.topic)
        return committed.get(sent.partition, -1) > sent.offset

    await wait_until(consumed, 30, "the executor reading the replayed record")

    lines = [orjson.loads(x) for x in effects.read_text().splitlines()]
    # each effect once: through three failures, a fallback and three replays
    assert Counter(x["key"] for x in lines) == {
        f"{task.task_id}/before": 1,
        f"{task.task_id}/after": 1,
    }
    results = await read_topic(stack.bootstrap, topics.step_results, at_least=1)
    shaky_done = [
        r
        for r in results
        if r.key == task.task_id.encode()
        and dict(r.headers)["ce_type"] == b"podium.step.completed.v1"
        and orjson.loads(r.value)["step_id"] == "shaky"
    ]
    assert len(shaky_done) == 1  # three replays, one more run of the step


async def test_recovery_killed_with_pending_retries_fires_each_once_after_restart(
    stack: Stack,
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    tasks = [
        TaskSubmitted(task_id=tid(f"pending{i}"), workflow="recovery-pending") for i in range(5)
    ]
    db = sa.create_engine(stack.settings.database_url("recovery"))
    try:
        async with PodiumClient(stack.settings) as client:
            for t in tasks:
                await client.submit(t)
            ids = [t.task_id for t in tasks]
            deadline = time.monotonic() + 20
            pending = 0
            while pending < len(tasks) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                with db.connect() as conn:
                    pending = conn.execute(
                        sa.select(sa.func.count()).where(timers.c.task_id.in_(ids))
                    ).scalar_one()
            assert pending == len(tasks)
            recovery = next(p for p in stack.processes if p.name == "recovery")
            stack.kill(recovery)
            stack.processes.remove(recovery)
            assert not client.outcomes.keys() & set(ids)  # nothing fired before the kill
            stack.spawn("recovery")
            stack.wait_ready(60)
            outcomes = await client.wait_for(ids, 60)
        assert all(isinstance(o, TaskCompleted) for o in outcomes.values()), outcomes
        with db.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count()).where(timers.c.task_id.in_(ids))
            ).scalar_one()
        assert left == 0
        # Every dispatch recovery committed is on the topic once its outbox is empty.
        await wait_until(
            outbox_empty(stack.settings.database_url("recovery")), 20, "recovery's outbox emptying"
        )
    finally:
        db.dispose()
    requests = await read_topic(stack.bootstrap, topics.steps("default"), at_least=10)
    dispatches: dict[str, set[tuple[int, str]]] = {t.task_id: set() for t in tasks}
    for r in requests:
        task_id = r.key.decode().split("/")[0]
        if task_id in dispatches:
            attempt = orjson.loads(r.value)["attempt"]
            dispatches[task_id].add((attempt, dict(r.headers)["ce_id"].decode()))
    # attempt 1 from the router and exactly one attempt 2 from the timer, per task
    assert {t: sorted(a for a, _ in d) for t, d in dispatches.items()} == {
        t.task_id: [1, 2] for t in tasks
    }
    for t in tasks:
        assert task_status(stack.settings, t.task_id)["steps"][0]["attempts"] == 2


async def test_a_dlq_of_ten_thousand_records_lists_and_replays_through_the_api(
    stack: Stack,
) -> None:
    prefix = stack.settings.topic_prefix
    dlq, scratch = f"{prefix}.bulk.v1.dlq", f"{prefix}.bulk-replayed.v1"
    # --to names the source of a dead-letter topic (the api writes nowhere else): the
    # scratch topic has its own DLQ.
    await ensure_topics(
        stack.settings,
        [
            TopicSpec(dlq, 2, "none", "bulk poison"),
            TopicSpec(scratch, 4, "none", "scratch"),
            TopicSpec(f"{scratch}.dlq", 1, "none", "scratch's dlq"),
        ],
    )
    poison = []
    for i in range(10_000):
        reason = "undecodable" if i % 4 else "invalid"
        headers = [
            ("x-n", str(i).encode()),
            (DlqHeader.REASON.header, reason.encode()),
            (DlqHeader.ERROR_TYPE.header, b"UndecodableMessage" if i % 4 else b"InvalidMessage"),
            (DlqHeader.ORIGINAL_TOPIC.header, f"{prefix}.bulk.v1".encode()),
        ]
        poison.append((dlq, None, b"{poison %d" % i, headers))
    producer = make_producer(stack.settings, client_id="test-bulk")
    await producer.start()
    try:
        await send_all(producer, poison)
    finally:
        await producer.stop()

    listed = podium(stack, "dlq", "list", dlq, "--json")
    assert listed.returncode == 0, listed.stderr
    (summary,) = orjson.loads(listed.stdout)
    assert summary["count"] == 10_000
    assert {g["reason"]: g["count"] for g in summary["groups"]} == {
        "undecodable": 7500,
        "invalid": 2500,
    }
    everything = podium(stack, "dlq", "list", "--json")
    assert everything.returncode == 0, everything.stderr
    assert dlq in {s["topic"] for s in orjson.loads(everything.stdout)}

    started = time.monotonic()
    replayed = podium(stack, "dlq", "replay", dlq, "--to", scratch)
    seconds = time.monotonic() - started
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed 10000 of 10000 from {dlq} to {scratch} in " in replayed.stdout
    assert replayed.stdout.rstrip().endswith(" records/s)"), replayed.stdout
    elsewhere = podium(stack, "dlq", "replay", dlq, "--to", f"{prefix}.bulk.v1.nowhere")
    assert elsewhere.returncode == 2, elsewhere.stderr
    assert elsewhere.stderr == "podium: error: not the source of a DLQ topic\n"
    assert seconds < 60, seconds
    copies = await read_topic(stack.bootstrap, scratch, at_least=10_000, timeout_s=60)
    assert len(copies) == 10_000
    assert len({dict(r.headers)["x-n"] for r in copies}) == 10_000
    assert not any(k.startswith(DLQ_HEADER_PREFIX) for r in copies for k, _ in r.headers)

    dry = podium(
        stack,
        "dlq",
        "replay",
        dlq,
        "--error-type",
        "invalid",
        "--limit",
        "3",
        "--dry-run",
        "--json",
    )
    report = orjson.loads(dry.stdout)
    assert (report["dry_run"], report["selected"], report["replayed"]) == (True, 3, 3)


def test_bad_arguments_are_one_line_and_exit_2(stack: Stack) -> None:
    run = podium(stack, "dlq", "show", "no-such-topic.dlq")
    assert run.returncode == 2 and run.stderr.startswith("podium: error: no topic")
    assert len(run.stderr.strip().splitlines()) == 1
    run = podium(
        stack, "dlq", "show", f"{stack.settings.topic_prefix}.tasks.v1.dlq", "--since", "yesterday"
    )
    assert run.returncode == 2 and "neither a time" in run.stderr
    assert "Traceback" not in run.stderr

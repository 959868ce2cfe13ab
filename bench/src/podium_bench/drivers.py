"""The load drivers, the same method for both systems: open-loop latency,
closed-loop throughput with the CPU and peak RSS of the system under test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from podium.client import PodiumClient
from podium_bench.options import PeerOptions
from podium_bench.processes import cpu_seconds, merge_numbered, peak_memory, system_processes
from podium_bench.stats import median_of, open_loop_schedule, summary
from podium_contracts import TaskCompleted, TaskSubmitted

Call = Callable[[int], Awaitable[None]]
Advance = Callable[[str], None]  # names the next stage on the progress bar


async def open_loop(call: Call, rate_per_s: float, seconds: float) -> list[float]:
    """Submit on a fixed schedule whatever earlier calls do; latency (ms) counted
    from each call's scheduled time, so a stall is not hidden (no coordinated omission)."""
    offsets = open_loop_schedule(rate_per_s, seconds)
    latencies: list[float] = []
    start = time.perf_counter()

    async def one(i: int, at: float) -> None:
        await call(i)
        latencies.append((time.perf_counter() - (start + at)) * 1000)

    running = []
    for i, at in enumerate(offsets):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*running)
    return latencies


async def closed_loop(call: Call, in_flight: int, seconds: float) -> tuple[int, float]:
    """Keep ``in_flight`` calls outstanding for ``seconds``; (completed, elapsed s)."""
    done = 0
    start = time.perf_counter()
    end = start + seconds
    counter = iter(range(10**12))

    async def lane() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call(next(counter))
            done += 1

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return done, time.perf_counter() - start


async def warm(call: Call, count: int) -> None:
    for i in range(count):
        await call(i)


def bench_task(workflow: str, i: int) -> TaskSubmitted:
    return TaskSubmitted(task_id=uuid.uuid4().hex, workflow=workflow, input={"i": i})


async def run_task(client: PodiumClient, task: TaskSubmitted) -> None:
    """Submit ``task`` and wait for its outcome; a failed task fails the bench."""
    await client.submit(task)
    out = (await client.wait_for([task.task_id], 60))[task.task_id]
    if not isinstance(out, TaskCompleted):
        raise RuntimeError(f"bench task failed: {out}")


def podium_call(client: PodiumClient, workflow: str) -> Call:
    async def call(i: int) -> None:
        await run_task(client, bench_task(workflow, i))

    return call


async def measure_latency(
    call: Call, system: str, workflow: str, opts: PeerOptions, advance: Advance
) -> dict[str, Any]:
    """``repeat`` open-loop runs, each after a warm-up: per-run percentiles, their
    median, and every sample (for the CDF plot; results.json keeps percentiles only)."""
    runs, samples = [], []
    for r in range(opts.repeat):
        advance(f"{system} {workflow} latency, run {r + 1}/{opts.repeat}")
        await warm(call, opts.warmup)
        lat = await open_loop(call, opts.rate_per_s, opts.latency_s)
        runs.append(summary(lat))
        samples.extend(lat)
    return {"runs": runs, "median": median_of(runs), "samples": samples}


async def measure_throughput(
    call: Call,
    system: str,
    opts: PeerOptions,
    advance: Advance,
    *,
    processes: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``repeat`` closed-loop runs, each after a warm-up, with the CPU and peak RSS of
    the system's processes: ``processes()``, by default ``system_processes(system)``
    ("podium" or "temporal"). They are listed after a second at full concurrency, so
    that a server with a process per connection (PostgreSQL) has opened the ones the
    load needs; numbered ones ("postgresql 2", ...) count as one."""
    listing = processes or (lambda: system_processes(system.lower()))
    runs = []
    for r in range(opts.repeat):
        advance(f"{system} throughput, run {r + 1}/{opts.repeat}")
        await warm(call, opts.warmup)
        await closed_loop(call, opts.in_flight, min(1.0, opts.throughput_s))
        runs.append(await throughput_run(call, opts, listing(), grouped=True))
    return throughput_figure(runs)


async def throughput_run(
    call: Call, opts: PeerOptions, procs: dict[str, Any], *, grouped: bool = False
) -> dict[str, Any]:
    """One closed-loop run with ``in_flight`` outstanding: tasks/s, and the CPU and
    peak memory of ``procs`` (per process, or with ``grouped`` per group of numbered
    processes, as a peer's PostgreSQL with a process per connection)."""
    before = cpu_seconds(procs)
    client_before = time.process_time()
    with peak_memory(procs, grouped=grouped) as peaks:
        done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
    after = cpu_seconds(procs)
    client_cpu = time.process_time() - client_before
    cpu = {k: after[k] - before[k] for k in after if k in before}
    if grouped:
        cpu = merge_numbered(cpu)
    return {
        "tasks": done,
        "seconds": elapsed,
        "tasks_per_s": done / elapsed,
        "cpu_s_per_1000": sum(cpu.values()) / done * 1000 if done else 0.0,
        "cpu_s_per_1000_by_process": {k: v / done * 1000 for k, v in cpu.items()} if done else {},
        "client_cpu_s_per_1000": client_cpu / done * 1000 if done else 0.0,
        "processes": len(procs),
        "peak_rss_mib": dict(peaks),
    }


def throughput_figure(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs, the median of their figures, of their peak memory and CPU per process."""
    scalar = median_of(
        [
            {k: float(v) for k, v in r.items() if isinstance(v, int | float) and k != "tasks"}
            for r in runs
        ]
    )
    rss = median_of([r["peak_rss_mib"] for r in runs])
    by_proc = median_of([r["cpu_s_per_1000_by_process"] for r in runs])
    return {"runs": runs, "median": scalar, "peak_rss_mib": rss, "cpu_by_process": by_proc}

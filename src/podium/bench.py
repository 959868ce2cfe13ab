"""Baselines the benchmarks measure podium against, in the same run on the same
broker: the raw produce→consume hop, and the facts of the machine.

`podium bench` itself (podium beside Temporal, every figure) is in bench_peers.py."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from podium_shared import Settings, TopicSpec
from podium_shared.kafka import ensure_topics, make_consumer, make_producer


# Broker hops a task makes: client→router, then per step on the critical path
# router→executor and executor→router, then router→client.
def hops(depth: int) -> int:
    return 2 + 2 * depth


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

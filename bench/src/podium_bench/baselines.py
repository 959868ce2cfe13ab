"""Baselines the benchmarks measure podium against, in the same run on the same
broker and disk: the raw produce→consume hop, and one SQLite commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import sqlalchemy as sa
from aiokafka import TopicPartition

from podium_shared import Settings, TopicSpec, make_engine
from podium_shared.kafka import ensure_topics, make_consumer, make_producer


# Broker hops a task makes: client→router, then per step on the critical path
# router→executor and executor→router, then router→client.
def hops(depth: int) -> int:
    return 2 + 2 * depth


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


def sqlite_commit_ms(home: Path, commits: int) -> list[float]:
    """One single-row INSERT per transaction, on an engine built as the services build theirs."""
    table = sa.Table(
        "bench_commit",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("payload", sa.Text),
    )
    engine = make_engine(f"sqlite:///{home / 'bench-commit.db'}", table.metadata)
    try:
        out = []
        for i in range(commits + 10):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(table.insert().values(payload=f"row {i}"))
            if i >= 10:
                out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        engine.dispose()

"""The broker's own failover time: the baseline for podium's kill -9 recovery.

Two bare aiokafka consumers share a group on an 8-partition topic with the
session timeout and heartbeat podium's consumers use; one runs in a child
process and is killed with SIGKILL. The figure is the time from the kill until
the survivor holds every partition. Nothing of podium is in that path, so
podium's recovery time divided by it is what podium adds.

On Tansu 0.6 the survivor is told to rejoin about a heartbeat after the
session timeout, and then gets the partitions about *half a session timeout*
later (measured here: 15.8 s at 10 s, 9.8 s at 6 s, 30.8 s at 20 s), so the
floor of "recovery ÷ session timeout" on this broker is about 1.5 times.

``python -m podium_bench.failover member BOOTSTRAP TOPIC GROUP SESSION_MS`` is
the child.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

HEARTBEAT_MS = 1_000  # as podium_shared.kafka.make_consumer
PARTITIONS = 8


def _consumer(bootstrap: str, topic: str | None, group: str, session_ms: int) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *((topic,) if topic else ()),
        bootstrap_servers=bootstrap,
        group_id=group,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=HEARTBEAT_MS,
        fetch_max_wait_ms=5,
        enable_auto_commit=False,
    )


async def _member(bootstrap: str, topic: str, group: str, session_ms: int) -> None:
    consumer = _consumer(bootstrap, topic, group, session_ms)
    await consumer.start()
    said = False
    while True:
        await consumer.getmany(timeout_ms=100)
        if consumer.assignment() and not said:
            print("assigned", flush=True)
            said = True


async def failover_s(bootstrap: str, session_ms: int, timeout_s: float = 120.0) -> float:
    """Seconds from SIGKILL of one of two bare group members until the other holds
    every partition."""
    topic, group = f"failover-{uuid.uuid4().hex[:8]}", f"failover-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    survivor = _consumer(bootstrap, None, group, session_ms)
    survivor.subscribe([topic])
    await survivor.start()
    polling = asyncio.create_task(_poll_forever(survivor))
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podium_bench.failover",
            "member",
            bootstrap,
            topic,
            group,
            str(session_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout_s)
        if "assigned" not in line:
            raise RuntimeError(f"the failover member did not join: {line!r}")
        deadline = time.monotonic() + timeout_s
        while len(survivor.assignment()) in (0, PARTITIONS):  # until the group is split
            if time.monotonic() > deadline:
                raise TimeoutError("the two failover members never shared the partitions")
            await asyncio.sleep(0.05)
        killed = time.perf_counter()
        child.kill()
        while len(survivor.assignment()) < PARTITIONS:
            if time.monotonic() > deadline + timeout_s:
                raise TimeoutError("the survivor never took over the partitions")
            await asyncio.sleep(0.01)
        return time.perf_counter() - killed
    finally:
        child.kill()
        child.wait()
        polling.cancel()
        await survivor.stop()


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=100)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "member":
        asyncio.run(_member(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    else:
        sys.exit("usage: python -m podium_bench.failover member BOOTSTRAP TOPIC GROUP SESSION_MS")

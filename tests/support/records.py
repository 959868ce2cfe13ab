"""Reading a whole topic, to count what is on it (``tests.support.kafka.read_topic``
waits for a number of records instead: use it when you know how many to expect)."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tests.support.kafka import partitions_of


async def read_to_end(
    bootstrap: str, topic: str, *, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning up to its end offsets as of the call,
    so a duplicate at the tail is counted too."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic, deadline)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout_s} s"
            for records in (await consumer.getmany(timeout_ms=100)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()

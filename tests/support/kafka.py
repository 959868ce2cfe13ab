"""Reading topics directly, as an operator's tool would."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from podium.hostile import send_raw


def reader(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer outside any group, to read topics from the beginning."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        auto_offset_reset="earliest",
    )


async def read_topic(
    bootstrap: str, topic: str, *, at_least: int, timeout_s: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic from the beginning, waiting until there are ``at_least``."""
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        parts = await partitions_of(consumer, topic, deadline)
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        out: list[ConsumerRecord[bytes, bytes]] = []
        while len(out) < at_least and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for recs in batches.values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


async def read_to_end(
    bootstrap: str, topic: str, *, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic from the beginning up to its end offsets as of the call,
    so a duplicate at the tail is counted too (``read_topic`` stops at ``at_least``)."""
    consumer = reader(bootstrap)
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


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, deadline: float) -> set[int]:
    """The topic's partitions. Apache Kafka sends a client metadata only for the topics
    it asked about (Tansu sends every topic), so ask for this one until it answers."""
    consumer._client.add_topic(topic)
    parts: set[int] | None = None
    while not parts and time.monotonic() < deadline:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await asyncio.sleep(0.1)
    assert parts, f"topic {topic} does not exist"
    return parts


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = await partitions_of(consumer, topic, time.monotonic() + 20)
        out = {}
        for p in parts:
            off = await consumer.committed(TopicPartition(topic, p))
            out[p] = off if off is not None else -1
        return out
    finally:
        await consumer.stop()


async def send_with_raw_header_key(
    bootstrap: str,
    topic: str,
    *,
    partition: int,
    raw_key: bytes,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
) -> int:
    """Produce one record with an extra header whose key is ``raw_key`` on the wire
    (e.g. bytes that are not UTF-8, which no well-behaved client sends); its offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = await send_raw(
            producer,
            topic,
            partition=partition,
            key=key,
            value=value,
            headers=[*headers, (raw_key, b"x")],
        )
        return int(sent.offset)
    finally:
        await producer.stop()

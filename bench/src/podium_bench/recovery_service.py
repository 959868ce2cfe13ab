"""Recovery benchmark, each figure beside its raw baseline on the same broker:

1. Replay throughput: ``podium dlq`` replay of N dead letters (read + send),
   beside raw pipelined produce of the same N records.
2. Fatal failure → DLQ record: a ``StepFailed`` (fatal) produced to the
   step-failures topic until its dead letter is readable, through the real
   recovery process, beside one raw produce→consume hop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from podium.stack import Stack
from podium_bench.options import PeerOptions
from podium_bench.scratch import scratch_broker
from podium_bench.stats import percentile
from podium_contracts import (
    DlqHeader,
    DlqReason,
    StepError,
    StepErrorType,
    StepFailed,
    StepRequested,
    dlq_topic,
    encode,
)
from podium_shared import Settings, Topics, TopicSpec
from podium_shared.dlq_records import read_records
from podium_shared.dlq_replay import replay, send_all
from podium_shared.kafka import ensure_topics, make_consumer, make_producer


@dataclass(frozen=True)
class Figures:
    records: int
    raw_produce_s: float
    replay_s: float
    read_s: float
    samples: int
    dlq_ms: list[float]
    raw_hop_ms: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "raw_produce_records_s": self.records / self.raw_produce_s,
            "replay_records_s": self.records / self.replay_s,
            "replay_send_records_s": self.records / (self.replay_s - self.read_s),
            "replay_to_raw": self.raw_produce_s / self.replay_s,
            "fatal_to_dlq_ms": {
                "p50": percentile(self.dlq_ms, 50),
                "p99": percentile(self.dlq_ms, 99),
            },
            "raw_hop_ms": {
                "p50": percentile(self.raw_hop_ms, 50),
                "p99": percentile(self.raw_hop_ms, 99),
            },
            "samples": self.samples,
        }


async def _tail(settings: Settings, topic: str) -> AIOKafkaConsumer:
    consumer = make_consumer(settings, group_id=None, client_id="bench-recovery")
    await consumer.start()
    parts = consumer.partitions_for_topic(topic)
    while not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def _await_marker(consumer: AIOKafkaConsumer, marker: bytes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for recs in (await consumer.getmany(timeout_ms=50)).values():
            if any(r.key == marker for r in recs):
                return
    raise TimeoutError(f"marker {marker!r} never arrived")


async def throughput(settings: Settings, records: int) -> tuple[float, float, float]:
    """Seconds for raw produce of N records, a replay of them, and its read part."""
    prefix = settings.topic_prefix
    raw, dlq, out = f"{prefix}.raw.v1", dlq_topic(f"{prefix}.bench.v1"), f"{prefix}.bench-out.v1"
    await ensure_topics(
        settings,
        [TopicSpec(t, 4, "none", "bench") for t in (raw, out)] + [TopicSpec(dlq, 1, "none", "b")],
    )
    headers = [
        ("ce_id", b""),
        (DlqHeader.REASON.header, DlqReason.UNDECODABLE.encode()),
        (DlqHeader.ORIGINAL_TOPIC.header, out.encode()),
    ]
    body = b"{" + b"x" * 200
    producer = make_producer(settings, client_id="bench-recovery")
    await producer.start()
    try:
        await send_all(producer, [(dlq, None, body, headers)] * records)
        started = time.perf_counter()
        await send_all(producer, [(raw, None, body, headers)] * records)
        raw_s = time.perf_counter() - started

        started = time.perf_counter()
        consumer = make_consumer(settings, group_id=None, client_id="bench-recovery")
        await consumer.start()
        try:
            dead = await read_records(consumer, dlq)
        finally:
            await consumer.stop()
        read_s = time.perf_counter() - started
        report = await replay(producer, dlq, dead, states={})
        replay_s = time.perf_counter() - started
    finally:
        await producer.stop()
    if len(report.replayed) != records:
        raise RuntimeError(f"replayed {len(report.replayed)} of {records}")
    return raw_s, replay_s, read_s


async def fatal_to_dlq(settings: Settings, samples: int) -> tuple[list[float], list[float]]:
    """Per sample: ms from a fatal StepFailed's send to its DLQ record, and a raw hop."""
    topics = Topics(settings.topic_prefix)
    dlq_topic = topics.dlq(topics.steps("default"))
    scratch = f"{settings.topic_prefix}.hop.v1"
    await ensure_topics(settings, [TopicSpec(scratch, 1, "none", "bench hop")])
    dlq_tail, hop_tail = await _tail(settings, dlq_topic), await _tail(settings, scratch)
    producer = make_producer(settings, client_id="bench-recovery")
    await producer.start()
    dlq_ms: list[float] = []
    hop_ms: list[float] = []
    try:
        for i in range(samples + 3):  # the first few warm the path up
            task, step = f"b{uuid.uuid4().hex[:8]}", "s"
            request = StepRequested(
                task_id=task,
                step_id=step,
                workflow="bench",
                capability="fail",
                pool="default",
                idempotency_key=f"{task}/{step}",
            )
            failed = StepFailed.for_step(
                request,
                error=StepError(
                    type=StepErrorType.CAPABILITY_ERROR, message="bench", error_class="fatal"
                ),
                duration_ms=0.0,
            )
            value, headers = encode(failed, source="bench")
            started = time.perf_counter()
            await producer.send_and_wait(
                topics.step_failures, value=value, key=task.encode(), headers=headers
            )
            await _await_marker(dlq_tail, f"{task}/{step}".encode(), 30)
            took = (time.perf_counter() - started) * 1000

            marker = f"hop{i}".encode()
            started = time.perf_counter()
            await producer.send_and_wait(scratch, value=b"x", key=marker)
            await _await_marker(hop_tail, marker, 30)
            hop = (time.perf_counter() - started) * 1000
            if i >= 3:
                dlq_ms.append(took)
                hop_ms.append(hop)
    finally:
        await producer.stop()
        await dlq_tail.stop()
        await hop_tail.stop()
    return dlq_ms, hop_ms


def markdown(f: Figures) -> str:
    d = f.as_dict()
    fd, hop = d["fatal_to_dlq_ms"], d["raw_hop_ms"]
    return f"""## Recovery: DLQ replay and the fatal-failure hop

| figure | measured | baseline (same broker, same run) | ratio |
|---|---|---|---|
| replay of {f.records} dead letters (read + send) | {d["replay_records_s"]:.0f} records/s \
| raw produce {d["raw_produce_records_s"]:.0f} records/s | {d["replay_to_raw"]:.2f} |
| replay, send part only | {d["replay_send_records_s"]:.0f} records/s | \
raw produce {d["raw_produce_records_s"]:.0f} records/s \
| {d["replay_send_records_s"] / d["raw_produce_records_s"]:.2f} |
| fatal StepFailed → DLQ record, p50 / p99 ({f.samples} samples) \
| {fd["p50"]:.1f} / {fd["p99"]:.1f} ms | raw hop {hop["p50"]:.1f} / {hop["p99"]:.1f} ms \
| {fd["p50"] / hop["p50"]:.1f}x |

The replay reads the DLQ from the beginning (until two empty polls: Tansu reports a
partition's end offset as its last batch's base offset), then publishes each record's
original bytes. The fatal path is two hops (step-failures → recovery → DLQ) plus
recovery's transaction and its outbox relay.
"""


def run_recovery_bench(
    settings: Settings, *, records: int = 10_000, samples: int = 50
) -> tuple[str, dict[str, Any]]:
    """Both figures on their own topic prefix; return (Markdown section, figures)."""
    with scratch_broker(settings, "recovery", "br") as settings:
        asyncio.run(
            ensure_topics(settings, Topics(settings.topic_prefix).declarations(("default",)))
        )
        raw_s, replay_s, read_s = asyncio.run(throughput(settings, records))
        stack = Stack(settings)
        try:
            stack.spawn("recovery")
            stack.wait_ready(90)
            dlq_ms, hop_ms = asyncio.run(fatal_to_dlq(settings, samples))
        finally:
            stack.stop()
    figures = Figures(records, raw_s, replay_s, read_s, samples, dlq_ms, hop_ms)
    return markdown(figures), figures.as_dict()


def recovery_service_section(settings: Settings, opts: PeerOptions) -> dict[str, Any]:
    """The report's recovery service section: Markdown and figures."""
    text, figures = run_recovery_bench(
        settings, records=opts.recovery_records, samples=opts.recovery_samples
    )
    return {"markdown": text, "figures": figures}


if __name__ == "__main__":
    import json

    text, data = run_recovery_bench(Settings())
    print(text)
    print(json.dumps(data, indent=2))

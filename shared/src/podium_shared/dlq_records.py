"""Reading dead-letter topics: their records (the original key, value and headers
plus the ``podium-dlq-*`` headers, see ``podium_shared.dlq``), every record of a
topic from the beginning, and a topic's summary. Shared by ``podium dlq`` (which
adds selecting and replaying, in ``podium.dlq``) and the api service's read-only
``/v1/dead-letters``."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from podium_contracts import DLQ_HEADER_PREFIX, DLQ_SUFFIX, DlqHeader, Headers
from podium_shared.kafka import read_to_end

__all__ = [
    "DlqError",
    "DlqRecord",
    "dlq_topics",
    "from_consumer_record",
    "read_records",
    "summarize",
]


class DlqError(Exception):
    """An operator error worth one line: unknown topic, unreadable task state."""


def _text(raw: bytes | None) -> str:
    if raw is None:
        return ""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One record of a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @property
    def meta(self) -> dict[str, str]:
        """The ``podium-dlq-*`` headers, without the prefix."""
        return {
            k.removeprefix(DLQ_HEADER_PREFIX): _text(v)
            for k, v in self.headers
            if k.startswith(DLQ_HEADER_PREFIX)
        }

    def original_headers(self) -> Headers:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]

    @property
    def ce_id(self) -> str | None:
        found = [v for k, v in self.headers if k == "ce_id"]
        return _text(found[0]) if found and found[0] else None

    @property
    def locator(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def id(self) -> str:
        """The record's ce_id (what TaskFailed names), else partition:offset."""
        return self.ce_id or self.locator

    @property
    def time(self) -> datetime:
        """When it was dead-lettered."""
        raw = self.meta.get(DlqHeader.TIME)
        if raw:
            try:
                at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
                return at if at.tzinfo else at.replace(tzinfo=UTC)
            except ValueError:
                pass
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    def payload(self) -> Any:
        """The value as JSON, or None when it is not JSON."""
        if self.value is None:
            return None
        try:
            return orjson.loads(self.value)
        except orjson.JSONDecodeError:
            return None

    @property
    def task_id(self) -> str | None:
        meta = self.meta
        if meta.get(DlqHeader.TASK_ID):
            return meta[DlqHeader.TASK_ID]
        body = self.payload()
        if not isinstance(body, dict):
            return None
        inner = body.get("data")  # a structured-mode CloudEvent
        task = (inner if isinstance(inner, dict) else body).get("task_id")
        return task if isinstance(task, str) else None

    @property
    def tenant(self) -> str | None:
        """The tenant its payload names (None when it names none or is not JSON)."""
        body = self.payload()
        if not isinstance(body, dict):
            return None
        inner = body.get("data")  # a structured-mode CloudEvent
        tenant = (inner if isinstance(inner, dict) else body).get("tenant")
        return tenant if isinstance(tenant, str) and tenant else None

    def matches_error(self, wanted: str) -> bool:
        meta = self.meta
        return wanted in (
            meta.get(DlqHeader.ERROR_TYPE),
            meta.get(DlqHeader.ERROR_CLASS),
            meta.get(DlqHeader.REASON),
        )

    def as_dict(self) -> dict[str, Any]:
        meta = self.meta
        body = self.payload()
        out: dict[str, Any] = {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "time": self.time.isoformat(),
            "reason": meta.get(DlqHeader.REASON),
            "error_type": meta.get(DlqHeader.ERROR_TYPE),
            "error_class": meta.get(DlqHeader.ERROR_CLASS),
            "error_message": meta.get(DlqHeader.ERROR_MESSAGE),
            "attempts": meta.get(DlqHeader.ATTEMPTS),
            "original_topic": meta.get(DlqHeader.ORIGINAL_TOPIC),
            "task_id": self.task_id,
            "step_id": meta.get(DlqHeader.STEP_ID),
            "key": _text(self.key) if self.key is not None else None,
            "headers": {k: _text(v) for k, v in self.headers},
            "payload": body,
        }
        if body is None and self.value is not None:
            out["value"] = _text(self.value)
        return out


def from_consumer_record(r: ConsumerRecord[bytes, bytes]) -> DlqRecord:
    return DlqRecord(
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        timestamp_ms=r.timestamp,
        key=r.key,
        value=r.value,
        headers=[(k, v if v is not None else b"") for k, v in (r.headers or ())],
    )


async def dlq_topics(consumer: AIOKafkaConsumer, prefix: str) -> list[str]:
    """The dead-letter topics under ``prefix``."""
    names: set[str] = await consumer.topics()
    return sorted(t for t in names if t.startswith(f"{prefix}.") and t.endswith(DLQ_SUFFIX))


async def read_records(
    consumer: AIOKafkaConsumer, topic: str, *, timeout_s: float = 120.0
) -> list[DlqRecord]:
    """Every record of ``topic``, from the beginning until no more arrive."""
    parts = consumer.partitions_for_topic(topic)
    for _ in range(50):
        if parts:
            break
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await asyncio.sleep(0.1)
    if not parts:
        raise DlqError(f"topic {topic!r} has no partitions")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    await consumer.seek_to_beginning(*tps)
    out: list[DlqRecord] = []
    try:
        async for r in read_to_end(consumer, ends, deadline=time.monotonic() + timeout_s):
            out.append(from_consumer_record(r))
    except TimeoutError:
        raise DlqError(f"reading {topic} took over {timeout_s}s; {len(out)} records read") from None
    out.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
    return out


def summarize(topic: str, records: Sequence[DlqRecord]) -> dict[str, Any]:
    """Count, oldest and newest, and counts per (reason, error class, error type)."""
    groups = Counter(
        (
            r.meta.get(DlqHeader.REASON, "?"),
            r.meta.get(DlqHeader.ERROR_CLASS, ""),
            r.meta.get(DlqHeader.ERROR_TYPE, ""),
        )
        for r in records
    )
    times = [r.time for r in records]
    return {
        "topic": topic,
        "count": len(records),
        "oldest": min(times).isoformat() if times else None,
        "newest": max(times).isoformat() if times else None,
        "groups": [
            {"reason": reason, "error_class": cls or None, "error_type": etype or None, "count": n}
            for (reason, cls, etype), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }

"""Selecting and replaying dead letters: the logic ``podium dlq`` and the api
service's ``POST /v1/dead-letters/{topic}/replay`` share (each supplies the states of
the tasks from its own source: the CLI the router's, the api its projection).

A replay publishes each selected record's original key, value and headers, byte for
byte, back to the original topic (or another one) and leaves the DLQ as it is.

Why a replay never runs a step's effect twice: the record keeps its ``ce_id``.
A ``step_abandoned`` record's ``ce_id`` is fresh (recovery minted it when it
dead-lettered the request), so the executor's inbox has never seen it and runs
the step once; a second replay of the same record carries the same ``ce_id``
and the inbox drops it; and the capability gets the step's idempotency key,
stable across retries and replays, so an effect is recorded once per key.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from podium_contracts import DlqHeader, Headers
from podium_shared.dlq import original_record
from podium_shared.dlq_records import DlqError, DlqRecord, dlq_topics

__all__ = [
    "SKIP_STATES",
    "Filters",
    "ReplayReport",
    "parse_since",
    "plan_replay",
    "replay",
    "resolve_topic",
    "select",
    "send_all",
]

# -- selecting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """Which records: all given conditions hold; ``limit`` keeps the oldest N."""

    error_type: str | None = None  # the error type, error class or DLQ reason
    since: datetime | None = None
    task: str | None = None
    ids: frozenset[str] = frozenset()  # ce_ids or partition:offset locators
    limit: int | None = None

    def matches(self, r: DlqRecord) -> bool:
        if self.error_type is not None and not r.matches_error(self.error_type):
            return False
        if self.since is not None and r.time < self.since:
            return False
        if self.task is not None and r.task_id != self.task:
            return False
        return not self.ids or r.id in self.ids or r.locator in self.ids


def select(records: Iterable[DlqRecord], filters: Filters) -> list[DlqRecord]:
    chosen = [r for r in records if filters.matches(r)]
    return chosen[: filters.limit] if filters.limit is not None else chosen


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(raw: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time, or an age such as 30s, 10m, 2h, 7d (before now)."""
    now = now or datetime.now(UTC)
    text = raw.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in _UNITS:
        try:
            return now - timedelta(seconds=float(text[:-1]) * _UNITS[text[-1]])
        except OverflowError as exc:  # beyond timedelta's ~2.7 million years, or year 1
            raise ValueError(f"--since {raw!r} reaches back before year 1") from exc
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"--since {raw!r} is neither a time (2026-11-01T12:00:00Z) nor an age (10m, 2h, 7d)"
        ) from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# -- reading -----------------------------------------------------------------------------------


async def resolve_topic(consumer: AIOKafkaConsumer, name: str, prefix: str) -> str:
    """``name`` as given, or under the prefix (``steps.default.v1.dlq``)."""
    names: set[str] = await consumer.topics()
    for candidate in (name, f"{prefix}.{name}"):
        if candidate in names:
            return candidate
    known = ", ".join(await dlq_topics(consumer, prefix)) or "none yet"
    raise DlqError(f"no topic {name!r} (dead-letter topics: {known})")


# -- replaying ---------------------------------------------------------------------------------

# Tasks in these states are over for good: replaying their steps can only waste work.
SKIP_STATES = {"completed": "task already completed", "cancelled": "task was cancelled"}


@dataclass
class ReplayReport:
    topic: str
    selected: int
    dry_run: bool
    replayed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def records_per_s(self) -> float:
        return len(self.replayed) / self.seconds if self.seconds > 0 else 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s["why"] for s in self.skipped))

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "selected": self.selected,
            "dry_run": self.dry_run,
            "replayed": len(self.replayed),
            "skipped": len(self.skipped),
            "skipped_by_reason": self.skipped_by_reason(),
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_per_s, 1),
            "replayed_records": self.replayed,
            "skipped_records": self.skipped,
        }


def plan_replay(
    records: Sequence[DlqRecord], states: dict[str, str], to: str | None
) -> tuple[list[tuple[DlqRecord, str]], list[dict[str, Any]]]:
    """Which records go where, and which are skipped and why."""
    sends: list[tuple[DlqRecord, str]] = []
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in records:
        target = to or r.meta.get(DlqHeader.ORIGINAL_TOPIC)
        task = r.task_id
        why = None
        if not target:
            why = f"no {DlqHeader.ORIGINAL_TOPIC.header} header (give --to)"
        elif r.ce_id is not None and r.ce_id in seen:
            why = "same ce_id as a record replayed in this run"
        elif task is not None and states.get(task) in SKIP_STATES:
            why = SKIP_STATES[states[task]]
        elif (
            r.meta.get(DlqHeader.VALUE_NULL) == "true"
            and r.key is None
            and DlqHeader.KEY_REF not in r.meta
        ):
            why = "a record with neither key nor value, which this client cannot send"
        if why:
            skipped.append({"id": r.id, "offset": r.locator, "task_id": task, "why": why})
            continue
        assert target is not None
        if r.ce_id is not None:
            seen.add(r.ce_id)
        sends.append((r, target))
    return sends, skipped


async def send_all(
    producer: AIOKafkaProducer,
    messages: Sequence[tuple[str, bytes | None, bytes | None, Headers]],
    progress: Callable[[int], None] | None = None,
    chunk: int = 1000,
) -> None:
    """Send (topic, key, value, headers) pipelined, waiting for acks per chunk."""
    for i in range(0, len(messages), chunk):
        part = messages[i : i + chunk]
        futures = [
            await producer.send(topic, value=value, key=key, headers=list(headers))
            for topic, key, value, headers in part
        ]
        await asyncio.gather(*futures)
        if progress is not None:
            progress(len(part))


async def replay(
    producer: AIOKafkaProducer | None,
    topic: str,
    records: Sequence[DlqRecord],
    *,
    states: dict[str, str],
    to: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Publish each selected record's original key, value and headers again (a dry
    run, which sends nothing, needs no producer)."""
    started = time.perf_counter()
    sends, skipped = plan_replay(records, states, to)
    report = ReplayReport(topic=topic, selected=len(records), dry_run=dry_run, skipped=skipped)
    if progress is not None and skipped:
        progress(len(skipped))
    if not dry_run:
        if producer is None:
            raise ValueError("a replay that is not a dry run needs a producer")
        await send_all(
            producer,
            [(target, *original_record(r.key, r.value, r.headers)) for r, target in sends],
            progress,
        )
    elif progress is not None:
        progress(len(sends))
    report.replayed = [
        {"id": r.id, "offset": r.locator, "task_id": r.task_id, "to": target} for r, target in sends
    ]
    report.seconds = time.perf_counter() - started
    return report

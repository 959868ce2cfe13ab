"""Executor pools (``GET /v1/pools``): replicas, lag per partition, breakers and rate
limits, read from the broker when asked.

    pools      the step topics under the prefix: ``<prefix>.steps.<pool>.v1``
    replicas   the members of the pool's consumer group (DescribeGroups)
    lag        per partition: end offset minus the group's committed offset
    breakers   the latest ``PoolStatusReported`` of each live replica, read from the
    rate limit tail of ``<prefix>.pool-status.v1`` (they live in the replicas' memory)

The decisions (which reports are live, a pool's lag and its breakers) are the pure
functions at the top; ``Pools`` does the broker calls. Tansu reports a partition's end
offset as the base offset of its last batch, so on Tansu a lag can read up to one
batch low; on Kafka it is exact. The memory service consumes the ``memory`` pool's
topic in a group of its own, and reports no breakers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, for_code

from podium_contracts import ContractError, PoolStatusReported, decode_record
from podium_shared import Settings, Topics
from podium_shared.kafka import make_admin, make_consumer, read_to_end

log = structlog.get_logger(__name__)

MEMORY_POOL = "memory"  # its topic's consumer is the memory service, not an executor
# A report older than this many of its replica's intervals is of a replica that is gone.
STALE_AFTER_INTERVALS = 3
# How many of the status topic's last records are read: a few minutes of reports of
# a hundred replicas at the default interval.
STATUS_TAIL = 2_000
_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


def live_reports(
    reports: Iterable[PoolStatusReported], now: datetime
) -> dict[str, list[PoolStatusReported]]:
    """Per pool, the latest report of each replica that has reported recently enough."""
    latest: dict[str, PoolStatusReported] = {}
    for r in reports:
        seen = latest.get(r.replica)
        if seen is None or r.reported_at >= seen.reported_at:
            latest[r.replica] = r
    out: dict[str, list[PoolStatusReported]] = {}
    for r in sorted(latest.values(), key=lambda r: r.replica):
        if now - r.reported_at <= timedelta(seconds=STALE_AFTER_INTERVALS * r.interval_s):
            out.setdefault(r.pool, []).append(r)
    return out


def partition_lag(
    committed: Mapping[int, int | None], begins: Mapping[int, int], ends: Mapping[int, int]
) -> list[dict[str, int]]:
    """Records not yet consumed per partition; a partition the group never committed
    lags by everything still on it."""
    out = []
    for p in sorted(ends):
        start = committed.get(p)
        if start is None or start < 0:
            start = begins.get(p, 0)
        out.append({"partition": p, "lag": max(0, ends[p] - start)})
    return out


def pool_breakers(reports: Sequence[PoolStatusReported]) -> dict[str, dict[str, Any]]:
    """Per provider: the worst state among the replicas, and each replica's."""
    out: dict[str, dict[str, Any]] = {}
    for r in reports:
        for provider, b in r.breakers.items():
            entry = out.setdefault(provider, {"state": "closed", "replicas": {}})
            entry["replicas"][r.replica] = b.model_dump()
            if _SEVERITY[b.state] > _SEVERITY[entry["state"]]:
                entry["state"] = b.state
    return dict(sorted(out.items()))


def pool_rate_limit(reports: Sequence[PoolStatusReported]) -> dict[str, Any] | None:
    """The pool's rate limit as its newest report says (every replica of a pool is
    configured alike); None without reports."""
    if not reports:
        return None
    newest = max(reports, key=lambda r: r.reported_at)
    return newest.rate_limit.model_dump()


def pool_view(
    pool: str,
    topic: str,
    members: Sequence[Mapping[str, str]],
    lag: list[dict[str, int]],
    reports: Sequence[PoolStatusReported],
) -> dict[str, Any]:
    """One pool as ``GET /v1/pools`` shows it."""
    return {
        "name": pool,
        "topic": topic,
        "replicas": len(members),
        "members": list(members),
        "lag": lag,
        "total_lag": sum(p["lag"] for p in lag),
        "breakers": pool_breakers(reports),
        "rate_limit": pool_rate_limit(reports),
        "reports": [
            {
                "replica": r.replica,
                "reported_at": r.reported_at.isoformat(),
                "concurrency": r.concurrency,
            }
            for r in reports
        ],
    }


def group_of(topics: Topics, pool: str) -> str:
    """The consumer group that reads ``pool``'s step topic."""
    return topics.group("memory") if pool == MEMORY_POOL else topics.group("executor", pool)


class PoolsUnavailable(Exception):
    """The broker could not be asked (down, or the api may not describe the groups)."""


@dataclass(frozen=True, slots=True)
class Pools:
    settings: Settings
    timeout_s: float = 20.0

    async def views(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every pool under the prefix, as ``GET /v1/pools`` shows it."""
        try:
            return await asyncio.wait_for(self._views(now), self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise PoolsUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _views(self, now: datetime | None) -> list[dict[str, Any]]:
        topics = Topics(self.settings.topic_prefix)
        client_id = f"podium-api-pools-{os.getpid()}"
        consumer = make_consumer(self.settings, group_id=None, client_id=client_id)
        admin = make_admin(self.settings, client_id=client_id)
        await consumer.start()
        try:
            await admin.start()
            names = sorted(await consumer.topics())
            pools = {p: t for t in names if (p := topics.pool_of(t)) is not None}
            reports = (
                await _read_tail(consumer, topics.pool_status)
                if topics.pool_status in names
                else []
            )
            live = live_reports(reports, now or datetime.now(UTC))
            groups = {p: group_of(topics, p) for p in pools}
            members = await _members(admin, list(groups.values()))
            parts = {pool: await _partitions(consumer, topic) for pool, topic in pools.items()}
            every = [tp for tps in parts.values() for tp in tps]
            begins = await consumer.beginning_offsets(every) if every else {}
            ends = await _true_ends(consumer, every, fetch=self.settings.broker != "kafka")
            out = []
            for pool, topic in sorted(pools.items()):
                tps = parts[pool]
                committed = await _committed(admin, groups[pool], tps)
                lag = partition_lag(
                    committed,
                    {tp.partition: begins[tp] for tp in tps},
                    {tp.partition: ends[tp] for tp in tps},
                )
                out.append(
                    pool_view(pool, topic, members.get(groups[pool], []), lag, live.get(pool, []))
                )
            return out
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
            await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # Kafka answers metadata only for topics asked about (docs/kafka.md).
    parts = consumer.partitions_for_topic(topic)
    for _ in range(20):
        if parts:
            break
        consumer._client.add_topic(topic)
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await asyncio.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(parts or ())]


async def _true_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], *, fetch: bool
) -> dict[TopicPartition, int]:
    """The end offsets of ``tps``. Tansu 0.6 answers with the base offset of each
    partition's last batch, so a lag computed from it misses that batch: unless the
    broker is Kafka (exact, and the api's ACLs there give it no Read on step topics),
    fetch from the reported end once and count what is still there."""
    if not tps:
        return {}
    ends: dict[TopicPartition, int] = dict(await consumer.end_offsets(tps))
    if not fetch:
        return ends
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, ends[tp])
    try:
        batches = await consumer.getmany(*tps, timeout_ms=200)
    except KafkaError:
        log.debug("the step topics are not the api's to read: lag from end offsets")
        batches = {}
    for tp, recs in batches.items():
        if recs:
            ends[tp] = max(ends[tp], recs[-1].offset + 1)
    consumer.unsubscribe()
    return ends


async def _members(admin: Any, groups: list[str]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    # One group per request: Tansu 0.6 garbles every group after the first in a
    # DescribeGroups answer (the second's fields shifted by one).
    for name in groups:
        for group in await _describe(admin, name):
            if group["error_code"]:
                raise for_code(group["error_code"])(f"describing group {name}")
            out[name] = [
                {
                    # Tansu leaves client_id empty; its member id starts with it.
                    "member_id": m["member_id"],
                    "client_id": m.get("client_id", ""),
                    "host": m.get("client_host", ""),
                }
                for m in group["members"]
            ]
    return out


async def _describe(admin: Any, group: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for response in await admin.describe_consumer_groups([group]):
        found += response.to_object()["groups"]
    return found


async def _committed(admin: Any, group: str, tps: list[TopicPartition]) -> dict[int, int | None]:
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    return {tp.partition: (o.offset if o is not None else None) for tp, o in offsets.items()}


async def _read_tail(consumer: AIOKafkaConsumer, topic: str) -> list[PoolStatusReported]:
    """The reports among ``topic``'s last ``STATUS_TAIL`` records per partition."""
    tps = await _partitions(consumer, topic)
    if not tps:
        return []
    consumer.assign(tps)
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, max(begins[tp], ends[tp] - STATUS_TAIL))
    out: list[PoolStatusReported] = []
    async for rec in read_to_end(consumer, ends):
        if (r := _report(rec)) is not None:
            out.append(r)
    consumer.unsubscribe()
    return out


def _report(record: ConsumerRecord[bytes, bytes]) -> PoolStatusReported | None:
    try:
        event = decode_record(record.value, record.headers or (), record.key)
    except ContractError:
        log.debug("not a status report", topic=record.topic, offset=record.offset)
        return None
    return event.payload if isinstance(event.payload, PoolStatusReported) else None

"""Dead letters, read-only (``GET /v1/dead-letters``): per dead-letter topic its
count, oldest and newest, and counts by reason and error, of the records the caller
may see.

Read with the api's own Kafka principal (its ACLs give Read on the DLQs of the
topics it knows, nothing else) and ``podium_shared.dlq_records``, the code
``podium dlq`` reads them with: every record of each topic, from the beginning, on
each request, without a consumer group. A record is visible to a token of the
tenant its payload names; one whose tenant cannot be told (a record that does not
decode, or names none) only to a token of every tenant.

Records and replay (``/v1/dead-letters/{topic}/records``, ``.../replay``) read the
same way and select and replay with ``podium_shared.dlq_replay``, the code of
``podium dlq replay``; the "already done" states a replay skips come from the api's
own projection (``runs.status``), never from the router's database."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiokafka.errors import KafkaError
from sqlalchemy.engine import Connection

from podium_api.state import runs
from podium_api.tokens import Principal
from podium_contracts import DLQ_SUFFIX, DlqHeader
from podium_shared import Settings
from podium_shared.dlq_records import DlqError, DlqRecord, dlq_topics, read_records, summarize
from podium_shared.dlq_replay import ReplayReport, replay
from podium_shared.kafka import make_consumer, make_producer


class NoSuchTopic(LookupError):
    """Not a dead-letter topic the api knows (or may read)."""


def visible_summary(topic: str, records: list[DlqRecord], who: Principal) -> dict[str, Any]:
    """``topic``'s summary of the records ``who`` may see."""
    return summarize(topic, [r for r in records if who.sees(r.tenant)])


def visible_records(records: Iterable[DlqRecord], who: Principal) -> list[DlqRecord]:
    """The records of the tenants ``who`` covers (a record naming none: ``*`` only)."""
    return [r for r in records if who.sees(r.tenant)]


def record_view(r: DlqRecord) -> dict[str, Any]:
    """One record as ``/v1/dead-letters/{topic}/records`` shows it: its value as JSON,
    else as text, else (a body the DLQ copy kept in the blob store) neither, with the
    reference in ``value_ref`` and the headers."""
    meta = r.meta
    body = r.payload()
    text = None
    if body is None and r.value is not None:
        text = r.value.decode("utf-8", errors="replace")
    return {
        "id": r.id,
        "locator": r.locator,
        "partition": r.partition,
        "offset": r.offset,
        "time": r.time,
        "task_id": r.task_id,
        "error_type": meta.get(DlqHeader.ERROR_TYPE),
        "reason": meta.get(DlqHeader.REASON),
        "headers": {k: v.decode("utf-8", errors="replace") for k, v in r.headers},
        "value": body,
        "value_text": text,
        "value_ref": meta.get(DlqHeader.VALUE_REF),
    }


def task_states(conn: Connection, task_ids: Iterable[str]) -> dict[str, str]:
    """Each known task's status in the api's projection (what a replay skips on)."""
    wanted = sorted(set(task_ids))
    found: dict[str, str] = {}
    for i in range(0, len(wanted), 500):
        rows = conn.execute(
            sa.select(runs.c.task_id, runs.c.status).where(runs.c.task_id.in_(wanted[i : i + 500]))
        )
        found.update({row.task_id: str(row.status) for row in rows})
    return found


def replay_target_allowed(to: str | None, dlq_names: Iterable[str]) -> bool:
    """A replay goes to a record's original topic, or to ``to`` when it is the source
    topic of a dead-letter topic the api knows (those its ACLs let it write), never
    anywhere else: an operator's token must not become a way to forge any event."""
    return to is None or f"{to}{DLQ_SUFFIX}" in set(dlq_names)


def resolve(name: str, dlq_names: Sequence[str], prefix: str) -> str:
    """``name`` as given, or under the prefix; NoSuchTopic unless it is a known DLQ."""
    for candidate in (name, f"{prefix}.{name}"):
        if candidate in dlq_names:
            return candidate
    raise NoSuchTopic(name)


def report_view(report: ReplayReport) -> dict[str, Any]:
    """The CLI's replay report (``podium dlq replay --json``), with the records listed."""
    return {
        "topic": report.topic,
        "selected": report.selected,
        "dry_run": report.dry_run,
        "replayed": report.replayed,
        "skipped": report.skipped,
        "skipped_by_reason": report.skipped_by_reason(),
        "seconds": round(report.seconds, 3),
    }


@dataclass(frozen=True, slots=True)
class DeadLetters:
    settings: Settings
    timeout_s: float = 60.0

    async def summaries(self, who: Principal) -> list[dict[str, Any]]:
        """One summary per dead-letter topic the api may read, of ``who``'s records."""
        out: list[dict[str, Any]] = []
        for topic in await self._topics():
            # A consumer per topic: a topic the api may not read (a tenant's own
            # ingress DLQ) fails its consumer, and must not fail the next topic's.
            consumer = make_consumer(self.settings, group_id=None, client_id="podium-api-dlq")
            await consumer.start()
            try:
                records = await read_records(consumer, topic, timeout_s=self.timeout_s)
            except (DlqError, KafkaError):
                continue  # not the api's to read
            finally:
                await consumer.stop()
            out.append(visible_summary(topic, records, who))
        return out

    async def records(self, name: str) -> tuple[str, list[DlqRecord], list[str]]:
        """Every record of the dead-letter topic ``name`` (prefixed or not), with the
        topic's full name and the names of every DLQ; NoSuchTopic when it is none the
        api may read."""
        consumer = make_consumer(self.settings, group_id=None, client_id="podium-api-dlq")
        await consumer.start()
        try:
            names = await dlq_topics(consumer, self.settings.topic_prefix)
            topic = resolve(name, names, self.settings.topic_prefix)
            try:
                records = await read_records(consumer, topic, timeout_s=self.timeout_s)
            except KafkaError as exc:  # a DLQ its ACLs do not let it read
                raise NoSuchTopic(name) from exc
            return topic, records, names
        finally:
            await consumer.stop()

    async def replay(
        self,
        topic: str,
        records: Sequence[DlqRecord],
        *,
        states: dict[str, str],
        to: str | None,
        dry_run: bool,
    ) -> ReplayReport:
        """``podium dlq replay`` of ``records``, with the api's own producer (none for
        a dry run, which sends nothing)."""
        if dry_run:
            return await replay(None, topic, records, states=states, to=to, dry_run=True)
        producer = make_producer(self.settings, client_id="podium-api-replay")
        await producer.start()
        try:
            return await replay(producer, topic, records, states=states, to=to)
        finally:
            await producer.stop()

    async def _topics(self) -> list[str]:
        consumer = make_consumer(self.settings, group_id=None, client_id="podium-api-dlq")
        await consumer.start()
        try:
            return await dlq_topics(consumer, self.settings.topic_prefix)
        finally:
            await consumer.stop()

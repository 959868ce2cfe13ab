"""Dead letters, read-only (``GET /v1/dead-letters``): per dead-letter topic its
count, oldest and newest, and counts by reason and error, of the records the caller
may see.

Read with the api's own Kafka principal (its ACLs give Read on the DLQs of the
topics it knows, nothing else) and ``podium_shared.dlq_records``, the code
``podium dlq`` reads them with: every record of each topic, from the beginning, on
each request, without a consumer group. A record is visible to a token of the
tenant its payload names; one whose tenant cannot be told (a record that does not
decode, or names none) only to a token of every tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from podium_api.tokens import Principal
from podium_shared import Settings
from podium_shared.dlq_records import DlqError, DlqRecord, dlq_topics, read_records, summarize
from podium_shared.kafka import make_consumer


def visible_summary(topic: str, records: list[DlqRecord], who: Principal) -> dict[str, Any]:
    """``topic``'s summary of the records ``who`` may see."""
    return summarize(topic, [r for r in records if who.sees(r.tenant)])


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

    async def _topics(self) -> list[str]:
        consumer = make_consumer(self.settings, group_id=None, client_id="podium-api-dlq")
        await consumer.start()
        try:
            return await dlq_topics(consumer, self.settings.topic_prefix)
        finally:
            await consumer.stop()

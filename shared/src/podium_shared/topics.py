"""Every topic podium uses, declared once.

``infra/topics.yaml`` is generated from this module (``podium topics --write``)
for operators who create topics with their own tooling; a test keeps the two
in step. Keys: task_id on task and result topics (per-task order), step_id on
pool topics (even spread over an executor pool's replicas).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from podium_contracts import DLQ_SUFFIX, TOPIC_PREFIX, TopicPattern, consumer_group, dlq_topic
from podium_contracts.asyncapi import carried_by

__all__ = [
    "DLQ_RETENTION_MS",
    "DLQ_SUFFIX",
    "POOL_STATUS_RETENTION_MS",
    "TopicSpec",
    "Topics",
    "dlq_configs",
]
# Dead letters must outlive the fix: the broker's default retention (7 days on
# Apache Kafka) can expire a record before anyone has replayed it.
DLQ_RETENTION_MS = 90 * 24 * 3600 * 1000  # 90 days; -1 keeps them for ever
# A tenant bound to its own topics (PODIUM_TENANTS) has <prefix>.tenant.<name>.tasks.v1
# and <prefix>.tenant.<name>.task-events.v1, beside the shared ones.
TENANT_INFIX = ".tenant."
# Replicas report every few seconds and only the latest report counts: an hour is plenty.
POOL_STATUS_RETENTION_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    purpose: str
    configs: Mapping[str, str] = field(default_factory=dict)  # topic configs at creation


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (``podium`` unless configured), from the patterns
    in ``podium_contracts.vocabulary``."""

    prefix: str = TOPIC_PREFIX

    @property
    def tasks(self) -> str:
        return TopicPattern.TASKS.under(self.prefix)

    @property
    def task_events(self) -> str:
        return TopicPattern.TASK_EVENTS.under(self.prefix)

    @property
    def step_results(self) -> str:
        return TopicPattern.STEP_RESULTS.under(self.prefix)

    @property
    def step_failures(self) -> str:
        return TopicPattern.STEP_FAILURES.under(self.prefix)

    def steps(self, pool: str) -> str:
        return TopicPattern.STEPS.under(self.prefix, pool=pool)

    @property
    def pool_status(self) -> str:
        return TopicPattern.POOL_STATUS.under(self.prefix)

    def pool_of(self, topic: str) -> str | None:
        """The executor pool whose steps topic ``topic`` is, or None."""
        head, tail = f"{self.prefix}.steps.", ".v1"
        if topic.startswith(head) and topic.endswith(tail):
            name = topic[len(head) : -len(tail)]
            return name if name and "." not in name else None
        return None

    def tenant_tasks(self, tenant: str) -> str:
        """The topic only ``tenant`` writes its submissions and cancel requests to."""
        return f"{self.prefix}{TENANT_INFIX}{tenant}.tasks.v1"

    def tenant_task_events(self, tenant: str) -> str:
        """The topic of ``tenant``'s task events, which only it reads."""
        return f"{self.prefix}{TENANT_INFIX}{tenant}.task-events.v1"

    def tenant_of(self, topic: str) -> str | None:
        """The tenant whose ingress topic ``topic`` is, or None."""
        head, tail = self.prefix + TENANT_INFIX, ".tasks.v1"
        if topic.startswith(head) and topic.endswith(tail):
            name = topic[len(head) : -len(tail)]
            return name if name and "." not in name else None
        return None

    def group(self, service: str, pool: str | None = None) -> str:
        """The consumer group of ``service`` (of one ``pool``, for the executor)."""
        return consumer_group(self.prefix, service, pool)

    def carries(self, topic: str) -> frozenset[str]:
        """The ce_types ``topic`` carries, as the AsyncAPI document declares them
        (``podium_contracts.asyncapi.CHANNELS``): what its consumers accept. A tenant's
        topics carry what the shared ones do."""
        if self.tenant_of(topic) is not None:
            return carried_by(self.tasks, self.prefix)
        if topic.startswith(self.prefix + TENANT_INFIX) and topic.endswith(".task-events.v1"):
            return carried_by(self.task_events, self.prefix)
        return carried_by(topic, self.prefix)

    @staticmethod
    def dlq(topic: str) -> str:
        return dlq_topic(topic)

    def declarations(
        self,
        pools: tuple[str, ...] = ("default", "memory"),
        *,
        tenants: tuple[str, ...] = (),
        dlq_retention_ms: int = DLQ_RETENTION_MS,
        replication_factor: int = 1,
    ) -> list[TopicSpec]:
        """The topics to create, with their partition counts and, for DLQs, configs."""
        base = [
            TopicSpec(self.tasks, 4, "task_id", "TaskSubmitted from upstream"),
            TopicSpec(
                self.task_events,
                4,
                "task_id",
                "TaskAccepted/Completed/Failed/Cancelled to upstream",
            ),
            TopicSpec(self.step_results, 4, "task_id", "StepCompleted/StepAbandoned to the router"),
            TopicSpec(self.step_failures, 4, "task_id", "StepFailed to recovery"),
        ]
        base += [
            TopicSpec(self.steps(p), 8, "step_id", f"StepRequested for pool {p}")
            for p in dict.fromkeys(pools)  # ordered and without repeats
        ]
        for t in dict.fromkeys(tenants):
            base += [
                TopicSpec(self.tenant_tasks(t), 4, "task_id", f"tenant {t}'s TaskSubmitted"),
                TopicSpec(self.tenant_task_events(t), 4, "task_id", f"tenant {t}'s task events"),
            ]
        # Every topic a service reads can be dead-lettered (task events too: memory reads
        # them), and on a broker that does not create topics on first use a DLQ that was
        # never declared cannot be written, which would hold back the outbox behind it.
        configs = dlq_configs(dlq_retention_ms, replication_factor)
        dlqs = [
            TopicSpec(self.dlq(t.name), 1, t.key, f"dead letters of {t.name}", configs)
            for t in base
        ]
        # Read only by the api, from its end, on request: no consumer dead-letters it.
        status = TopicSpec(
            self.pool_status,
            1,
            "replica",
            "PoolStatusReported: executor replicas' breakers and rate limits",
            {"retention.ms": str(POOL_STATUS_RETENTION_MS)},
        )
        return base + dlqs + [status]


def dlq_configs(retention_ms: int, replication_factor: int) -> dict[str, str]:
    """A DLQ topic's configs: long retention, and with three or more replicas a write
    acknowledged by all but one of them (``acks=all``), so a dead letter survives
    the loss of a broker; with fewer replicas any such minimum would stop writes."""
    configs = {"retention.ms": str(retention_ms)}
    if replication_factor >= 3:
        configs["min.insync.replicas"] = str(replication_factor - 1)
    return configs

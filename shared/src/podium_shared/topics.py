"""Every topic podium uses, declared once.

``infra/topics.yaml`` is generated from this module (``podium topics --write``)
for operators who create topics with their own tooling; a test keeps the two
in step. Keys: task_id on task and result topics (per-task order), step_id on
pool topics (even spread over an executor pool's replicas).
"""

from __future__ import annotations

from dataclasses import dataclass

from podium_contracts.asyncapi import carried_by

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (``podium`` unless configured)."""

    prefix: str = "podium"

    @property
    def tasks(self) -> str:
        return f"{self.prefix}.tasks.v1"

    @property
    def task_events(self) -> str:
        return f"{self.prefix}.task-events.v1"

    @property
    def step_results(self) -> str:
        return f"{self.prefix}.step-results.v1"

    @property
    def step_failures(self) -> str:
        return f"{self.prefix}.step-failures.v1"

    def steps(self, pool: str) -> str:
        return f"{self.prefix}.steps.{pool}.v1"

    def carries(self, topic: str) -> frozenset[str]:
        """The ce_types ``topic`` carries, as the AsyncAPI document declares them
        (``podium_contracts.asyncapi.CHANNELS``): what its consumers accept."""
        return carried_by(topic, self.prefix)

    @staticmethod
    def dlq(topic: str) -> str:
        return topic + DLQ_SUFFIX

    def declarations(self, pools: tuple[str, ...] = ("default", "memory")) -> list[TopicSpec]:
        """The topics to create, with their partition counts."""
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
        # Every topic a service reads can be dead-lettered (task events too: memory reads
        # them), and on a broker that does not create topics on first use a DLQ that was
        # never declared cannot be written, which would hold back the outbox behind it.
        dlqs = [TopicSpec(self.dlq(t.name), 1, t.key, f"dead letters of {t.name}") for t in base]
        return base + dlqs

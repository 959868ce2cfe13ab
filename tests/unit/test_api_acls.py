"""The api's principal on a secure cluster: it reads the four topics of a run's story,
writes submissions and cancels to tasks, uses any group of its own name (one per
database), reads the DLQs and writes their source topics (replay), and nothing more:
no DLQ writes (it dead-letters nothing), no reading of steps, no other topic."""

from __future__ import annotations

import pytest

from podium_shared.acls import Operation, Pattern, Resource, acls

pytestmark = pytest.mark.unit


def allowed(user: str, op: Operation, resource: Resource, name: str) -> bool:
    return any(
        a.principal == user
        and a.operation in (op, Operation.ALL)
        and a.resource is resource
        and (name == a.name if a.pattern is Pattern.LITERAL else name.startswith(a.name))
        for a in acls("podium", ("default",))
    )


def test_the_api_reads_the_story_of_runs_and_writes_only_tasks_and_replays() -> None:
    T = Resource.TOPIC
    for topic in ("tasks", "task-events", "step-results", "step-failures"):
        assert allowed("api", Operation.READ, T, f"podium.{topic}.v1"), topic
        assert not allowed("api", Operation.WRITE, T, f"podium.{topic}.v1.dlq"), topic
    assert allowed("api", Operation.WRITE, T, "podium.tasks.v1")
    assert not allowed("api", Operation.READ, T, "podium.steps.default.v1")


def test_the_api_replays_to_each_dlq_source_and_nowhere_else() -> None:
    T = Resource.TOPIC
    sources = ["tasks", "task-events", "step-results", "step-failures"]
    sources += ["steps.default", "steps.memory"]
    for topic in sources:
        assert allowed("api", Operation.READ, T, f"podium.{topic}.v1.dlq"), topic
        assert allowed("api", Operation.WRITE, T, f"podium.{topic}.v1"), topic
    for other in ("podium.steps.other.v1", "podium.tenant.acme.tasks.v1", "podium.egress.v1"):
        assert not allowed("api", Operation.WRITE, T, other), other
    assert not allowed("api", Operation.READ, T, "podium.tenant.acme.tasks.v1.dlq")
    assert allowed("api", Operation.READ, Resource.GROUP, "podium-api-0123456789ab")
    assert not allowed("api", Operation.READ, Resource.GROUP, "podium-router")
    assert not allowed("api", Operation.READ, Resource.GROUP, "podium-apiary")

"""The api's principal on a secure cluster: it reads the four topics of a run's story,
writes submissions and cancels to tasks, uses any group of its own name (one per
database), and nothing more: no DLQ writes (it dead-letters nothing), no steps."""

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


def test_the_api_reads_the_story_of_runs_and_writes_only_tasks() -> None:
    T = Resource.TOPIC
    for topic in ("tasks", "task-events", "step-results", "step-failures"):
        assert allowed("api", Operation.READ, T, f"podium.{topic}.v1"), topic
        assert not allowed("api", Operation.WRITE, T, f"podium.{topic}.v1.dlq"), topic
    assert allowed("api", Operation.WRITE, T, "podium.tasks.v1")
    assert not allowed("api", Operation.WRITE, T, "podium.task-events.v1")
    assert not allowed("api", Operation.READ, T, "podium.steps.default.v1")
    assert not allowed("api", Operation.WRITE, T, "podium.steps.default.v1")
    assert allowed("api", Operation.READ, Resource.GROUP, "podium-api-0123456789ab")
    assert not allowed("api", Operation.READ, Resource.GROUP, "podium-router")
    assert not allowed("api", Operation.READ, Resource.GROUP, "podium-apiary")

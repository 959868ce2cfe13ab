"""Memory stays within its scope, through the real broker and the real services:
a subject's task output, remembered as an episode, reaches no other subject of its
tenant and nothing of another tenant, by any recall, search, conversation or forget,
whatever the step's input names; the subject itself still recalls it."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskFailed, TaskSubmitted
from podium_memory.state import entries
from tests.integration.test_memory import run, run_all, stored_entries, task, uid
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

EPISODE_WAIT_S = 30


async def episode_row(stack: Stack, task_id: str) -> Any:
    """The stored episode of a finished task, once memory has recorded it from task-events."""
    key = f"episode:{task_id}"
    rows: list[Any] = []

    async def recorded() -> bool:
        rows[:] = await stored_entries(stack, entries.c.idempotency_key == key)
        return bool(rows)

    await wait_until(recorded, EPISODE_WAIT_S, f"the episode of {task_id}", interval_s=0.2)
    [row] = rows
    return row


def probes(tenant: str, subject: str | None, word: str, episode_id: int) -> list[TaskSubmitted]:
    """Every way a step of (tenant, subject) could ask memory for another's episode."""
    every_scope: list[list[dict[str, str]] | None] = [
        None,  # the default scope
        [{"kind": "workflow"}],
        [{"kind": "workflow", "id": "memory-recall"}],
        [{"kind": "project", "id": "memory-recall"}],
        [{"kind": "session", "id": "ada"}],
        [{"kind": "session", "id": "memory-recall"}],
    ]
    if subject is not None:  # a task without a subject has no subject scope
        every_scope += [[{"kind": "subject"}], [{"kind": "subject"}, {"kind": "workflow"}]]
    out = []
    for scopes in every_scope:
        # A full-text search for the word, and the newest episodes whatever they say.
        for recall in ({"query": word}, {"query": "", "types": ["episode"]}):
            recall = {**recall, "limit": 100}
            if scopes is not None:
                recall["scopes"] = scopes
            out.append(task("memory-recall", recall, tenant=tenant, subject=subject))
    out += [
        task("memory-conversation", {"session": "ada"}, tenant=tenant, subject=subject),
        task(
            "memory-forget",
            {"ids": [episode_id], "scopes": [{"kind": "workflow"}]},
            tenant=tenant,
            subject=subject,
        ),
        task("memory-forget", {"scopes": [{"kind": "workflow"}]}, tenant=tenant, subject=subject),
    ]
    return out


async def test_a_subjects_episode_reaches_no_other_subject_or_tenant(stack: Stack) -> None:
    a, b = uid("tenant-a"), uid("tenant-b")
    word = f"zq{uuid.uuid4().hex}"  # one full-text token no other test stores
    await run(
        stack, "memory-remember", {"text": f"the launch code is {word}"}, tenant=a, subject="ada"
    )
    # ada recalls it: her task's output, and so its episode, carries the word.
    told = task("memory-recall", {"query": word}, tenant=a, subject="ada")
    [done] = await run_all(stack, [told])
    assert isinstance(done, TaskCompleted) and word in orjson.dumps(done.output).decode()
    row = await episode_row(stack, told.task_id)
    assert word in row.text
    assert (row.tenant, row.scope_kind, row.scope_id, row.subject) == (
        a,
        "workflow",
        "memory-recall",
        "ada",
    )
    # A task without a subject leaves a shared episode, as before.
    shared = task("memory-recall", {"query": ""}, tenant=a, subject=None)
    await run_all(stack, [shared])
    assert (await episode_row(stack, shared.task_id)).subject is None

    others = [(a, "bob"), (a, None), (a, ""), (b, "ada"), (b, None)]
    asked = [p for tenant, subject in others for p in probes(tenant, subject, word, row.id)]
    # Step input naming ada's scope or tenant A is refused, not obeyed.
    forbidden = [
        task(
            "memory-recall", {"scopes": [{"kind": "subject", "id": "ada"}]}, tenant=a, subject="bob"
        ),
        task("memory-forget", {"tenant": a}, tenant=b, subject="ada"),
    ]
    invalid = [
        task("memory-recall", {"query": word, "tenant": a}, tenant=b, subject="ada"),
        task("memory-recall", {"query": word, "subject": "ada"}, tenant=a, subject="bob"),
    ]
    outcomes = await run_all(stack, asked + forbidden + invalid, timeout_s=180)
    for probe, outcome in zip(asked, outcomes[: len(asked)], strict=True):
        assert isinstance(outcome, TaskCompleted), (probe.input, outcome)
        assert word not in orjson.dumps(outcome.output).decode(), (probe, outcome.output)
        if probe.workflow == "memory-forget" and "ids" in probe.input:
            assert outcome.output == {"forgotten": 0}
    expected = ["forbidden"] * len(forbidden) + ["invalid_input"] * len(invalid)
    refusals = zip(forbidden + invalid, outcomes[len(asked) :], expected, strict=True)
    for probe, outcome, error in refusals:
        assert isinstance(outcome, TaskFailed), (probe.input, outcome)
        assert outcome.error.type == error, (probe.input, outcome.error)

    # ada still recalls her own episode (no one else's forget reached it), and her fact.
    mine = {"query": word, "scopes": [{"kind": "workflow"}], "types": ["episode"], "limit": 100}
    output = await run(stack, "memory-recall", mine, tenant=a, subject="ada")
    assert told.task_id in [e["metadata"]["task_id"] for e in output["entries"]]
    facts = await run(stack, "memory-recall", {"query": word}, tenant=a, subject="ada")
    assert [e["text"] for e in facts["entries"]] == [f"the launch code is {word}"]
    rows = await stored_entries(stack, entries.c.idempotency_key == f"episode:{told.task_id}")
    assert [r.id for r in rows] == [row.id]


async def test_a_shared_episode_is_still_recalled_by_every_subject_of_its_tenant(
    stack: Stack,
) -> None:
    tenant = uid("tenant-shared")
    shared = task("memory-recall", {"query": "nothing here"}, tenant=tenant, subject=None)
    await run_all(stack, [shared])
    await episode_row(stack, shared.task_id)
    episodes = {"scopes": [{"kind": "workflow"}], "types": ["episode"], "limit": 100}
    for subject in ("ada", "bob", None):
        output = await run(stack, "memory-recall", episodes, tenant=tenant, subject=subject)
        assert shared.task_id in [e["metadata"]["task_id"] for e in output["entries"]], subject
    other = await run(stack, "memory-recall", episodes, tenant=uid("tenant-other"), subject=None)
    assert shared.task_id not in orjson.dumps(other).decode()

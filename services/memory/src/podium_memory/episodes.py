"""Episodic memory: what a finished task did, as a recallable entry.

An episode records what a task event carries: workflow, outcome, steps,
usage, digests of the input and the output, and a preview of the output. It
belongs to whom the task belonged: the event's tenant and subject; events from
older routers lack them, and then they come from the task's memory steps (see
``memory_task_owners``). Nothing in a task's input or output decides this.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from podium_contracts import TaskCompleted, TaskFailed

PREVIEW_CHARS = 300
MEMORY_POOL = "memory"  # the pool whose steps this service runs (topics.steps("memory"))


def ran_memory_step(event: TaskCompleted | TaskFailed) -> bool | None:
    """Whether the task ran a memory step, from the event alone: a completed task
    lists its steps and their pools; a failed one does not (None: ask the noted owner).

    Only such tasks get an episode. An episode lives in its workflow's scope, which only
    that workflow's memory steps read, so a task of a workflow that never touches memory
    would leave entries nobody can recall, at a write per task (issue 18)."""
    if isinstance(event, TaskCompleted):
        return any(s.pool == MEMORY_POOL for s in event.steps)
    return None


def digest(value: Any) -> str:
    """A short stable digest of a JSON value (sorted keys)."""
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(raw).hexdigest()[:16]


def preview(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def episode(event: TaskCompleted | TaskFailed) -> tuple[str, dict[str, Any]]:
    """The entry text and metadata for a finished task."""
    usage = event.usage.model_dump()
    if isinstance(event, TaskCompleted):
        steps = [s.step_id for s in event.steps]
        text = (
            f"workflow {event.workflow} task {event.task_id} completed "
            f"in {len(steps)} steps ({', '.join(steps)}); cost ${event.usage.cost_usd:.4f}; "
            f"output: {preview(event.output)}"
        )
        return text, {
            "task_id": event.task_id,
            "workflow": event.workflow,
            "outcome": "completed",
            "input_digest": event.input_digest,
            "output_digest": digest(event.output),
            "steps": [s.model_dump() for s in event.steps],
            "usage": usage,
            "finished_at": event.completed_at.isoformat(),
        }
    text = (
        f"workflow {event.workflow} task {event.task_id} failed: "
        f"{event.error.type}: {event.error.message}"
        + (f" at step {event.error.step_id}" if event.error.step_id else "")
    )
    return text, {
        "task_id": event.task_id,
        "workflow": event.workflow,
        "outcome": "failed",
        "input_digest": event.input_digest,
        "error": event.error.model_dump(),
        "usage": usage,
        "finished_at": event.failed_at.isoformat(),
    }


def episode_owner(
    tenant: str | None, subject: str | None, noted: tuple[str, str | None] | None
) -> tuple[str, str | None] | None:
    """Whose episode this is, ``(tenant, subject)``, from the event's fields and the owner
    noted from the task's memory steps; None when the tenant is unknown.

    The event's tenant wins. A subject noted for the same tenant still counts when the
    event names none: when in doubt an episode is kept narrower, never wider.
    """
    if tenant is None:
        return noted
    if subject is None and noted is not None and noted[0] == tenant:
        subject = noted[1]
    return tenant, subject

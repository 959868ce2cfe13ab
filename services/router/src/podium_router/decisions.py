"""The router's decisions as plain functions: what runs next, what the task returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podium_router.workflows import StepDef, Workflow


def runnable_steps(workflow: Workflow, started: set[str], completed: set[str]) -> list[StepDef]:
    """Steps not yet started whose every need has completed (fan-out happens here)."""
    return [s for s in workflow.steps if s.id not in started and set(s.needs) <= completed]


def step_input(step: StepDef, task_input: Mapping[str, Any]) -> dict[str, Any]:
    """A step's input: its ``with`` block, else the task's input."""
    return dict(step.with_) if step.with_ is not None else dict(task_input)


def task_output(workflow: Workflow, outputs: Mapping[str, Any]) -> Any:
    """The final step's output, or a mapping of them when several steps end the graph."""
    finals = workflow.final_steps
    if len(finals) == 1:
        return outputs[finals[0].id]
    return {s.id: outputs[s.id] for s in finals}


def idempotency_key(task_id: str, step_id: str) -> str:
    """Stable across retries and replays of the same step of the same task."""
    return f"{task_id}/{step_id}"

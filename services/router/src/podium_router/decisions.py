"""The router's decisions as plain functions: what runs next, with what input,
what the task returns, and whether a limit has been crossed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from podium_router.templates import render_json
from podium_router.workflows import StepDef, Workflow


def runnable_steps(workflow: Workflow, started: set[str], completed: set[str]) -> list[StepDef]:
    """Steps not yet started whose every need has completed (fan-out happens here)."""
    return [s for s in workflow.steps if s.id not in started and set(s.needs) <= completed]


def template_context(
    task: Mapping[str, Any], task_input: Mapping[str, Any], outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """What templates and `when` rules can see: the input, finished steps, the task."""
    return {
        "input": task_input,
        "steps": {step_id: {"output": out} for step_id, out in outputs.items()},
        "task": task,
    }


def step_input(step: StepDef, context: Mapping[str, Any]) -> dict[str, Any]:
    """A step's input: its rendered ``with`` block, else the task's input."""
    if step.with_ is None:
        return dict(context["input"])
    rendered = render_json(step.with_, context)
    assert isinstance(rendered, dict)
    return rendered


def task_output(workflow: Workflow, context: Mapping[str, Any]) -> Any:
    """The workflow's ``output`` template, else the final step's output (or a
    mapping of them when several steps end the graph)."""
    if workflow.output is not None:
        return render_json(workflow.output, context)
    steps = context["steps"]
    finals = workflow.final_steps
    if len(finals) == 1:
        return steps[finals[0].id]["output"]
    return {s.id: steps[s.id]["output"] for s in finals}


def idempotency_key(task_id: str, step_id: str) -> str:
    """Stable across retries and replays of the same step of the same task."""
    return f"{task_id}/{step_id}"


def budget_exceeded(
    cost_usd: float, tokens: int, max_cost_usd: float | None, max_tokens: int | None
) -> str | None:
    """Why the task's budget is spent, or None."""
    if max_cost_usd is not None and cost_usd > max_cost_usd:
        return f"cost ${cost_usd:.4f} exceeds the budget of ${max_cost_usd:.4f}"
    if max_tokens is not None and tokens > max_tokens:
        return f"{tokens} tokens exceed the budget of {max_tokens}"
    return None


def step_timeout(
    step_timeout_s: float | None, deadline: datetime | None, now: datetime
) -> float | None:
    """A step may not outlive its task: its timeout is capped by the task's deadline."""
    remaining = (deadline - now).total_seconds() if deadline else None
    candidates = [t for t in (step_timeout_s, remaining) if t is not None]
    return max(min(candidates), 0.001) if candidates else None


def watch_timeout(
    step_timeout_s: float | None, default_s: float, deadline: datetime | None, now: datetime
) -> float:
    """How long the watchdog waits for a step's result: its own timeout, else the
    router's default, capped by the task's deadline. Every step gets one, so a step
    whose request or result is lost is re-driven instead of waited on for ever."""
    own = step_timeout_s or default_s
    remaining = (deadline - now).total_seconds() if deadline else own
    return max(min(own, remaining), 0.001)

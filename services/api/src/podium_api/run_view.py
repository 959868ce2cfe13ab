"""What one run's page shows beyond its stored rows, decided in plain functions: its
usage in the API's shape, and its steps as a DAG (each with the steps it depends on,
the steps not begun yet included, from the plan its TaskAccepted carried)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PENDING = "pending"  # a planned step that has not begun (no event of it seen yet)


def usage_view(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored ``Usage`` (prompt/completion tokens, cost) as the API shows it."""
    if usage is None:
        return None
    return {
        "tokens_in": int(usage.get("prompt_tokens") or 0),
        "tokens_out": int(usage.get("completion_tokens") or 0),
        "cost_usd": float(usage.get("cost_usd") or 0.0),
    }


def run_usage(
    run_usage: Mapping[str, Any] | None, step_usages: Iterable[Mapping[str, Any] | None]
) -> dict[str, Any] | None:
    """The run's usage: what its outcome reported (the router's sum), else, while it
    runs, the sum of its steps' so far; None when nothing reported any."""
    if run_usage is not None:
        return usage_view(run_usage)
    known = [u for u in (usage_view(s) for s in step_usages) if u is not None]
    if not known:
        return None
    return {
        "tokens_in": sum(u["tokens_in"] for u in known),
        "tokens_out": sum(u["tokens_out"] for u in known),
        "cost_usd": sum(u["cost_usd"] for u in known),
    }


def dag_steps(
    plan: Sequence[Mapping[str, Any]] | None, rows: Sequence[Mapping[Any, Any]]
) -> list[dict[str, Any]]:
    """The run's steps with ``depends_on``: those begun in the order they began, then
    the planned steps not begun yet (status ``pending``) in the plan's order. Without a
    plan (a router before plans were published) the begun steps depend on nothing known."""
    needs = {str(p["step_id"]): list(p.get("depends_on") or []) for p in plan or ()}
    begun = {r["step_id"] for r in rows}
    out = [dict(r) | {"depends_on": needs.get(r["step_id"], [])} for r in rows]
    for p in plan or ():
        if p["step_id"] in begun:
            continue
        out.append(
            {
                "step_id": p["step_id"],
                "status": PENDING,
                "capability": p.get("capability"),
                "pool": None,
                "attempts": 0,
                "duration_ms": None,
                "total_duration_ms": 0.0,
                "first_at": None,
                "updated_at": None,
                "output": None,
                "error": None,
                "usage": None,
                "retry_due_at": None,
                "dlq": None,
                "depends_on": needs[p["step_id"]],
            }
        )
    return out

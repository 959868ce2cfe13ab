"""Reads runs and their history straight from the router's database, for the tests
that check what the router itself recorded (read-only; the router owns the database).
The CLI reads them through the api (`podium status`, `podium history`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_router.state import StepStatus, history, run_steps, runs
from podium_shared import Settings


class StatusError(Exception):
    pass


@contextmanager
def router_db(settings: Settings) -> Iterator[Connection]:
    url = settings.database_url("router")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise StatusError(
            f"no router database at {url.removeprefix('sqlite:///')} "
            "(is PODIUM_HOME the one `podium up` uses?)"
        )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _run_summary(run: Any) -> dict[str, Any]:
    return {
        "task_id": run.task_id,
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "status": run.status,
        "tenant": run.tenant,
        "accepted_at": _iso(run.accepted_at),
        "finished_at": _iso(run.finished_at),
        "usage": {"cost_usd": run.cost_usd, "tokens": run.tokens},
    }


def task_status(settings: Settings, task_id: str) -> dict[str, Any]:
    with router_db(settings) as conn:
        run = conn.execute(sa.select(runs).where(runs.c.task_id == task_id)).first()
        if run is None:
            raise StatusError(f"no task {task_id!r}")
        steps = conn.execute(
            sa.select(run_steps)
            .where(run_steps.c.task_id == task_id)
            .order_by(run_steps.c.dispatched_at, run_steps.c.step_id)
        ).all()
    return {
        **_run_summary(run),
        "output": run.output,
        "error": run.error,
        "deadline": _iso(run.deadline),
        "steps": [
            {
                "step_id": s.step_id,
                "capability": s.capability,
                "pool": s.pool,
                "model": s.model,
                "status": s.status,
                "attempts": s.attempts,
                "duration_ms": s.duration_ms,
            }
            for s in steps
        ],
    }


def task_history(settings: Settings, task_id: str) -> dict[str, Any]:
    """Every transition of a task, and what happens next."""
    info = task_status(settings, task_id)
    with router_db(settings) as conn:
        rows = conn.execute(
            sa.select(history).where(history.c.task_id == task_id).order_by(history.c.id)
        ).all()
    events = [
        {
            "at": _iso(r.at),
            "event": r.event,
            "step_id": r.step_id,
            "attempt": r.attempt,
            "pool": r.pool,
            "capability": r.capability,
            "model": r.model,
            "workflow_version": r.workflow_version,
            "cause": r.cause,
            "next": r.next,
        }
        for r in rows
    ]
    return {**info, "history": events, "next": what_next(info, events)}


def what_next(info: dict[str, Any], events: list[dict[str, Any]]) -> str:
    if info["status"] != "running":
        return events[-1]["next"] if events and events[-1]["next"] else "nothing: it is over"
    open_steps = [
        s for s in info["steps"] if s["status"] in (StepStatus.DISPATCHED, StepStatus.FAILED)
    ]
    if not open_steps:
        return "dispatching the next steps"
    return "; ".join(
        f"{s['step_id']}: "
        + (
            "waiting for recovery"
            if s["status"] == StepStatus.FAILED
            else f"waiting for attempt {s['attempts']} on pool {s['pool']}"
        )
        for s in open_steps
    )

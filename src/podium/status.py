"""Reads a task's run from the router's database, for `podium status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from podium_router.state import run_steps, runs
from podium_shared import Settings


class StatusError(Exception):
    pass


def task_status(settings: Settings, task_id: str) -> dict[str, Any]:
    url = settings.database_url("router")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise StatusError(
            f"no router database at {url.removeprefix('sqlite:///')} "
            "(is PODIUM_HOME the one `podium up` uses?)"
        )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            run = conn.execute(sa.select(runs).where(runs.c.task_id == task_id)).first()
            if run is None:
                raise StatusError(f"no task {task_id!r}")
            steps = conn.execute(
                sa.select(run_steps)
                .where(run_steps.c.task_id == task_id)
                .order_by(run_steps.c.dispatched_at)
            ).all()
    finally:
        engine.dispose()
    return {
        "task_id": run.task_id,
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "status": run.status,
        "accepted_at": run.accepted_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "output": run.output,
        "error": run.error,
        "steps": [
            {
                "step_id": s.step_id,
                "capability": s.capability,
                "pool": s.pool,
                "status": s.status,
                "attempts": s.attempts,
                "duration_ms": s.duration_ms,
            }
            for s in steps
        ],
    }

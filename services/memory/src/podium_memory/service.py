"""Memory capabilities, run inside the consumer's transaction so a remembered
fact, the inbox record and the step result commit together.

This is the skeleton's memory: remember and a substring recall within the
task's own tenant and subject. Relevance ranking, more scopes, forgetting and
retention come with the memory issue.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from podium_contracts import StepCompleted, StepError, StepFailed, StepRequested
from podium_shared import Topics, UnitOfWork
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Connection

from podium_memory.state import entries


class RememberInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=100_000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class RecallInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = ""
    limit: int = Field(default=5, ge=1, le=100)


def scope_of(step: StepRequested) -> str:
    return f"subject:{step.subject}" if step.subject else f"workflow:{step.workflow}"


def remember(conn: Connection, step: StepRequested) -> dict[str, Any]:
    data = RememberInput.model_validate(step.input)
    existing = conn.execute(
        sa.select(entries.c.id).where(entries.c.idempotency_key == step.idempotency_key)
    ).first()
    if existing:  # the same step again (a retry or a replay): remember once
        return {"id": existing[0]}
    result = conn.execute(
        entries.insert().values(
            tenant=step.tenant,
            scope=scope_of(step),
            text=data.text,
            metadata=data.metadata,
            idempotency_key=step.idempotency_key,
            created_at=datetime.now(UTC),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return {"id": key[0]}


def recall(conn: Connection, step: StepRequested) -> dict[str, Any]:
    data = RecallInput.model_validate(step.input)
    query = sa.select(entries.c.id, entries.c.text, entries.c.metadata).where(
        entries.c.tenant == step.tenant, entries.c.scope == scope_of(step)
    )
    if data.query:
        escaped = data.query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(entries.c.text.like(f"%{escaped}%", escape="\\"))
    rows = conn.execute(query.order_by(entries.c.created_at.desc()).limit(data.limit))
    return {"entries": [{"id": r.id, "text": r.text, "metadata": r.metadata} for r in rows]}


OPERATIONS = {"memory.remember": remember, "memory.recall": recall}


class Memory:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics

    def run_step(self, step: StepRequested, uow: UnitOfWork) -> None:
        started = time.perf_counter()
        operation = OPERATIONS.get(step.capability)
        error: StepError | None = None
        output: Any = None
        if operation is None:
            error = StepError(
                type="unknown_capability", message=f"memory has no capability {step.capability!r}"
            )
        else:
            try:
                output = operation(uow.conn, step)
            except ValidationError as exc:
                error = StepError(type="invalid_input", message=str(exc.errors()[0]["msg"]))
        elapsed = (time.perf_counter() - started) * 1000
        if error is None:
            uow.publish(
                self.topics.step_results,
                StepCompleted(
                    task_id=step.task_id,
                    step_id=step.step_id,
                    capability=step.capability,
                    pool=step.pool,
                    output=output,
                    attempt=step.attempt,
                    duration_ms=elapsed,
                ),
                key=step.task_id,
            )
        else:
            uow.publish(
                self.topics.step_failures,
                StepFailed(
                    task_id=step.task_id,
                    step_id=step.step_id,
                    capability=step.capability,
                    pool=step.pool,
                    attempt=step.attempt,
                    error=error,
                    duration_ms=elapsed,
                    request=step,
                ),
                key=step.task_id,
            )

"""The effect ledger: the recorded result of every completed step, by its
idempotency key. The executor looks a key up *before* calling the capability
and records a result in the same transaction as the outbox row that reports
it, so a second execution of a key returns the recorded result instead of
acting again. Failures are not recorded: a retry must run again.

The window it cannot close is a crash after the capability acted and before
that transaction committed; the redelivered step then runs again with the same
key, which is why capabilities pass the key to the systems they change
(``effect.record`` deduplicates by it in its file, ``http.request`` sends an
``Idempotency-Key`` header)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from podium_contracts import StepCompleted, StepRequested, Usage
from podium_shared.db import insert_ignore

metadata = sa.MetaData()

effects = sa.Table(
    "effects",
    metadata,
    sa.Column("idempotency_key", sa.String(500), primary_key=True),
    sa.Column("task_id", sa.String(200), nullable=False),
    sa.Column("step_id", sa.String(200), nullable=False),
    sa.Column("capability", sa.String(200), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("output", sa.LargeBinary, nullable=False),  # orjson bytes, as published
    sa.Column("usage", sa.JSON, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
)


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def lookup(self, step: StepRequested) -> StepCompleted | None:
        """The recorded result of this step's key, reported for this request."""
        with self._engine.connect() as conn:
            row = self._get(conn, step.idempotency_key)
        return None if row is None else _completed(step, row)

    def record(self, conn: Connection, step: StepRequested, done: StepCompleted) -> StepCompleted:
        """Record ``done`` unless the key has a result already; return the one recorded."""
        inserted = insert_ignore(
            conn,
            effects,
            {
                "idempotency_key": step.idempotency_key,
                "task_id": step.task_id,
                "step_id": step.step_id,
                "capability": step.capability,
                "attempt": step.attempt,
                "output": orjson.dumps(done.output),
                "usage": done.usage.model_dump(),
                "duration_ms": done.duration_ms,
                "recorded_at": time.time(),
            },
        )
        if inserted:
            return done
        row = self._get(conn, step.idempotency_key)
        assert row is not None
        return _completed(step, row)

    @staticmethod
    def _get(conn: Connection, key: str) -> Any:
        return conn.execute(sa.select(effects).where(effects.c.idempotency_key == key)).first()


def _completed(step: StepRequested, row: Any) -> StepCompleted:
    return StepCompleted(
        task_id=step.task_id,
        step_id=step.step_id,
        capability=step.capability,
        pool=step.pool,
        output=orjson.loads(row.output),
        attempt=step.attempt,
        duration_ms=row.duration_ms,
        usage=Usage.model_validate(row.usage),
    )

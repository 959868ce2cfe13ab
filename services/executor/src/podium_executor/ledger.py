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
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from podium_contracts import StepCompleted, StepRequested, Usage
from podium_executor.state import effects
from podium_shared.db import insert_ignore

# Built once: executed per step, so SQLAlchemy reuses its compiled form.
_BY_KEY = sa.select(effects).where(effects.c.idempotency_key == sa.bindparam("key"))


_BY_KEYS = sa.select(effects).where(
    effects.c.idempotency_key.in_(sa.bindparam("keys", expanding=True))
)


class Ledger:
    def __init__(self, engine: Engine, *, preloaded_max: int = 10_000) -> None:
        self._engine = engine
        # Keys looked up ahead for a fetched batch: key -> row (None: not recorded).
        self._preloaded: OrderedDict[str, Any] = OrderedDict()
        self._preloaded_max = preloaded_max

    def preload(self, conn: Connection, keys: Sequence[str]) -> None:
        """Look up the keys of a fetched batch in one query, for ``lookup`` to use.

        A step waits at most one round of slots between this and its call; a key
        recorded meanwhile is caught by ``record``, which keeps the first result."""
        if not keys:
            return
        rows = {r.idempotency_key: r for r in conn.execute(_BY_KEYS, {"keys": list(keys)})}
        for key in keys:
            self._preloaded[key] = rows.get(key)
            self._preloaded.move_to_end(key)
        while len(self._preloaded) > self._preloaded_max:  # steps dropped by a rebalance
            self._preloaded.popitem(last=False)

    def lookup(self, step: StepRequested) -> StepCompleted | None:
        """The recorded result of this step's key, reported for this request."""
        key = step.idempotency_key
        if key in self._preloaded:
            row = self._preloaded.pop(key)
        else:
            with self._engine.connect() as conn:
                row = self._get(conn, key)
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
        return conn.execute(_BY_KEY, {"key": key}).first()


def _completed(step: StepRequested, row: Any) -> StepCompleted:
    return StepCompleted.for_step(
        step,
        output=orjson.loads(row.output),
        duration_ms=row.duration_ms,
        usage=Usage.model_validate(row.usage),
    )

"""The executor's edge: run the step outside the transaction, report inside it."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from podium_contracts import Event, StepRequested
from podium_executor.service import Executor, Outcome
from podium_shared import Handler, UnitOfWork

Ran = tuple[StepRequested, Outcome]


def make_handler(executor: Executor) -> Handler[Ran]:
    async def execute(event: Event) -> Ran:
        if not isinstance(event.payload, StepRequested):
            raise TypeError(f"the executor does not handle {type(event.payload).__name__}")
        return event.payload, await executor.run_step(event.payload)

    def apply(_event: Event, ran: Ran | None, uow: UnitOfWork) -> None:
        assert ran is not None
        executor.report(*ran, uow)

    def prepare(conn: Connection, events: list[Event]) -> None:
        if executor.ledger is not None:
            keys = [
                e.payload.idempotency_key for e in events if isinstance(e.payload, StepRequested)
            ]
            executor.ledger.preload(conn, keys)

    return Handler(apply=apply, execute=execute, prepare=prepare)

"""The executor's edge: run the step outside the transaction, report inside it."""

from __future__ import annotations

from podium_contracts import Event, StepRequested
from podium_shared import Handler, UnitOfWork

from podium_executor.service import Executor, Outcome


def make_handler(executor: Executor) -> Handler[Outcome]:
    async def execute(event: Event) -> Outcome:
        if not isinstance(event.payload, StepRequested):
            raise TypeError(f"the executor does not handle {type(event.payload).__name__}")
        return await executor.run_step(event.payload)

    def apply(_event: Event, outcome: Outcome | None, uow: UnitOfWork) -> None:
        assert outcome is not None
        executor.report(outcome, uow)

    return Handler(apply=apply, execute=execute)

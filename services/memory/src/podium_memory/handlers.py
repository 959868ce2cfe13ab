"""The memory service's edge."""

from __future__ import annotations

from podium_contracts import Event, StepRequested
from podium_shared import Handler, UnitOfWork

from podium_memory.service import Memory


def make_handler(memory: Memory) -> Handler[None]:
    def apply(event: Event, _result: None, uow: UnitOfWork) -> None:
        if not isinstance(event.payload, StepRequested):
            raise TypeError(f"memory does not handle {type(event.payload).__name__}")
        memory.run_step(event.payload, uow)

    return Handler(apply=apply)

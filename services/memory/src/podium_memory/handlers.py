"""The memory service's edge: memory steps, and task events for episodes."""

from __future__ import annotations

from podium_contracts import (
    Event,
    StepRequested,
    TaskAccepted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskRejected,
)
from podium_memory.service import Memory
from podium_shared import Handler, UnitOfWork


def make_handler(memory: Memory) -> Handler[None]:
    def apply(event: Event, _result: None, uow: UnitOfWork) -> None:
        payload = event.payload
        if isinstance(payload, StepRequested):
            memory.run_step(payload, uow)
        elif isinstance(payload, TaskCompleted | TaskFailed):
            memory.record_episode(payload, uow)
        elif isinstance(payload, TaskAccepted | TaskCancelled | TaskRejected):
            pass  # no episode: nothing has run yet, nothing ran, or it was called off
        else:
            raise TypeError(f"memory does not handle {type(payload).__name__}")

    return Handler(apply=apply)

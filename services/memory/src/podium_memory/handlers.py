"""The memory service's edge: memory steps, and task events for episodes."""

from __future__ import annotations

from podium_contracts import (
    Contract,
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

# Every contract on the topics memory reads is handled or ignored on purpose: anything
# else would be dead-lettered as a processing error. An accepted task has not ended yet;
# a cancelled one has no outcome to remember (and the cancel was the user's, not the
# workflow's: an episode of it would teach recall nothing). A rejected task never ran.
HANDLED: tuple[type[Contract], ...] = (StepRequested, TaskCompleted, TaskFailed)
IGNORED: tuple[type[Contract], ...] = (TaskAccepted, TaskCancelled, TaskRejected)


def make_handler(memory: Memory) -> Handler[None]:
    def apply(event: Event, _result: None, uow: UnitOfWork) -> None:
        payload = event.payload
        if isinstance(payload, StepRequested):
            memory.run_step(payload, uow)
        elif isinstance(payload, TaskCompleted | TaskFailed):
            memory.record_episode(payload, uow)
        elif not isinstance(payload, IGNORED):
            raise TypeError(f"memory does not handle {type(payload).__name__}")

    return Handler(apply=apply)

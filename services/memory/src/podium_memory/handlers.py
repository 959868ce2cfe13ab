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
    TaskHistoryRecorded,
    TaskRejected,
)
from podium_memory.episodes import ran_memory_step
from podium_memory.service import Memory
from podium_shared import Handler
from podium_shared.dispatch import UseCases, apply_by_type


def use_cases(memory: Memory) -> UseCases:
    # Every contract on the topics memory reads is handled or ignored on purpose (None):
    # anything else would be dead-lettered as a processing error. An accepted task has
    # not ended yet; a cancelled one has no outcome to remember (and the cancel was the
    # user's, not the workflow's: an episode of it would teach recall nothing). A
    # rejected task never ran. A history entry is for readers that show a run's story.
    return {
        StepRequested: memory.run_step,
        TaskCompleted: memory.record_episode,
        TaskFailed: memory.record_episode,
        TaskAccepted: None,
        TaskCancelled: None,
        TaskRejected: None,
        TaskHistoryRecorded: None,
    }


def wanted(event: Event, ignored: tuple[type[Contract], ...]) -> bool:
    """Whether memory has anything to do with an event: its steps, and the outcome of a
    task that ran a memory step (a failed task's is known only from memory's own note).
    The rest is passed over before the inbox, so a task that never uses memory costs
    memory a decode per event, not a transaction. A type outside the table still goes
    to apply, which dead-letters what memory was not written for."""
    payload = event.payload
    if isinstance(payload, TaskCompleted | TaskFailed):
        return ran_memory_step(payload) is not False
    return not isinstance(payload, ignored)


def make_handler(memory: Memory) -> Handler[None]:
    cases = use_cases(memory)
    ignored = tuple(c for c, case in cases.items() if case is None)
    return Handler(apply=apply_by_type("memory", cases), wants=lambda event: wanted(event, ignored))

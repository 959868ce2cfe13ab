"""The memory service's edge: memory steps, and task events for episodes."""

from __future__ import annotations

from podium_contracts import (
    StepRequested,
    TaskAccepted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskHistoryRecorded,
    TaskRejected,
)
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


def make_handler(memory: Memory) -> Handler[None]:
    return Handler(apply=apply_by_type("memory", use_cases(memory)))

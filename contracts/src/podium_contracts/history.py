"""The kinds of transition the router writes to a task's history (its audit
trail), declared once for the writer and every reader. The values are the
strings stored in the ``history.event`` column: existing databases hold them,
so a value never changes; a new kind is an addition."""

from __future__ import annotations

from enum import StrEnum


class HistoryKind(StrEnum):
    ACCEPTED = "accepted"  # the task started a run
    STEP_DISPATCHED = "step_dispatched"
    STEP_COMPLETED = "step_completed"
    STEP_TIMED_OUT = "step_timed_out"  # the router's watchdog handed it to recovery
    RETRY_SCHEDULED = "retry_scheduled"  # recovery will run the step again
    STEP_ABANDONED = "step_abandoned"  # recovery gave up on the step
    REOPENED = "reopened"  # a replayed step succeeded after the task had failed on it
    LATE_RESULT_IGNORED = "late_result_ignored"
    CANCEL_IGNORED = "cancel_ignored"
    CANCEL_REFUSED = "cancel_refused"  # another tenant asked to cancel this task
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"

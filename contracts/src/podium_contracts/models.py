"""Message contracts, version 1.

Every model is frozen and names its CloudEvents type in ``CE_TYPE``. Additive
changes (a new optional field) keep the version; anything else is a new
module with new types, and consumers keep reading the old one.

Every message is named as a fact, in the past tense, requests included
(``TaskSubmitted``, ``StepRequested``, ``TaskCancelRequested``): on a log a request
is something that happened, read by more than one consumer and replayed later, and
each receiver decides what it means. There are no imperative commands; why is in
docs/architecture.md. A class's docstring is its JSON Schema's description: rewording
one changes the checked-in schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from podium_contracts.vocabulary import ErrorClass

JsonObject = dict[str, Any]

# Numbers an upstream system sends are bounded by what every store of them holds: the
# router keeps them in INTEGER columns, 32-bit on PostgreSQL (2^63 overflowed SQLite).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests (a scalar is 0, ``{}`` and ``[]`` are 1); iterative,
    so no input can exhaust the interpreter's stack."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


class Contract(BaseModel):
    """Base of every message payload."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    CE_TYPE: ClassVar[str]


class Budget(BaseModel):
    # Unknown fields are ignored, like every contract's: a field added in a later
    # minor change must not make v1 readers reject the whole task.
    model_config = ConfigDict(frozen=True, extra="ignore")

    max_cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            cost_usd=self.cost_usd + other.cost_usd,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class StepError(BaseModel):
    """What went wrong in a step, and whether trying again can help."""

    model_config = ConfigDict(frozen=True)

    # Typed str, not StepErrorType: a capability may name a type of its own.
    type: str = Field(description="timeout, rate_limited, unavailable, invalid_input, ...")
    message: str
    error_class: ErrorClass = "fatal"
    # Like HTTP's Retry-After: an open circuit knows when its next trial is, and a
    # retry before then fails without reaching the provider, using up an attempt.
    retry_after_s: float | None = Field(
        default=None,
        ge=0,
        description="retryable errors: wait at least this long before the next attempt",
    )


class DlqLocation(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    record_id: str = Field(description="ce_id of the dead-lettered record")


class RetryPolicy(BaseModel):
    """How recovery retries a step that failed with a retryable error."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_s: float = Field(default=1.0, gt=0)
    max_s: float = Field(default=60.0, gt=0)
    jitter: bool = True


class FallbackPolicy(BaseModel):
    """Where a step's retries go after ``after_attempts`` failures."""

    model_config = ConfigDict(frozen=True)

    pool: str | None = None
    model: str | None = None
    after_attempts: int = Field(default=1, ge=1)


class TaskSubmitted(Contract):
    """An upstream system asks podium to run a workflow."""

    CE_TYPE: ClassVar[str] = "podium.task.submitted.v1"

    task_id: str = Field(min_length=1, max_length=200, description="client-chosen; idempotency key")
    workflow: str = Field(min_length=1, max_length=200)
    workflow_version: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="default: the newest"
    )
    input: JsonObject = Field(default_factory=dict)
    tenant: str = Field(default="default", min_length=1, max_length=200)
    subject: str | None = Field(
        default=None, max_length=200, description="who the task is for; memory scope"
    )
    priority: int = Field(default=0, ge=INT32_MIN, le=INT32_MAX)
    deadline: datetime | None = None
    budget: Budget = Field(default_factory=Budget)
    metadata: JsonObject = Field(default_factory=dict)


class PlannedStep(BaseModel):
    """One step of the workflow a run follows, and the steps it waits for."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    step_id: str
    capability: str
    depends_on: list[str] = Field(default_factory=list, description="the steps it needs")


class TaskAccepted(Contract):
    CE_TYPE: ClassVar[str] = "podium.task.accepted.v1"

    task_id: str
    workflow: str
    workflow_version: int = 1
    accepted_at: datetime
    tenant: str | None = Field(default=None, description="whose task: the submission's tenant")
    steps: list[PlannedStep] = Field(
        default_factory=list,
        description="the run's plan: every step of its workflow version, with what it needs",
    )


class StepSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    step_id: str
    capability: str
    pool: str
    attempts: int
    duration_ms: float


class TaskCompleted(Contract):
    CE_TYPE: ClassVar[str] = "podium.task.completed.v1"

    task_id: str
    workflow: str
    output: Any
    steps: list[StepSummary]
    usage: Usage = Field(default_factory=Usage)
    accepted_at: datetime
    completed_at: datetime
    tenant: str | None = None
    subject: str | None = None
    input_digest: str | None = Field(default=None, description="sha256 of the task's input")


class TaskError(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    step_id: str | None = None


class TaskFailed(Contract):
    CE_TYPE: ClassVar[str] = "podium.task.failed.v1"

    task_id: str
    workflow: str
    error: TaskError
    dlq: DlqLocation | None = None
    usage: Usage = Field(default_factory=Usage)
    failed_at: datetime
    tenant: str | None = None
    subject: str | None = None
    input_digest: str | None = Field(default=None, description="sha256 of the task's input")


class TaskRejected(Contract):
    """The router refused a submission: it could not be read (``undecodable``), names a
    contract it does not know (``unknown_type``), breaks the contract (``invalid``) or
    could not be accepted (``processing_error``). Nothing ran; the original is in the
    tasks topic's dead-letter topic, to fix and submit again (or replay). A submission
    whose ``task_id`` another tenant's task already holds is rejected with
    ``task_id_in_use`` (nothing is dead-lettered; the other task is untouched)."""

    CE_TYPE: ClassVar[str] = "podium.task.rejected.v1"

    task_id: str = Field(description="from the payload, else the record's key")
    workflow: str | None = None
    error: TaskError = Field(description="type: the dead-letter reason; message: why")
    dlq: DlqLocation | None = Field(default=None, description="unset when it had no ce_id")
    rejected_at: datetime
    tenant: str | None = Field(
        default=None, description="the submitter's tenant; unset when the record did not say"
    )


class StepRequested(Contract):
    """The router asks a pool to run one step of one task."""

    CE_TYPE: ClassVar[str] = "podium.step.requested.v1"

    task_id: str
    step_id: str = Field(description="the step's name inside its workflow")
    workflow: str
    capability: str
    pool: str
    input: JsonObject = Field(default_factory=dict)
    attempt: int = Field(default=1, ge=1)
    idempotency_key: str = Field(description="stable across retries and replays of this step")
    tenant: str = Field(default="default", min_length=1, max_length=200)
    subject: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    model: str | None = Field(default=None, description="chosen by a routing rule, for llm.*")
    retry: RetryPolicy | None = None
    fallback: FallbackPolicy | None = None


class StepCompleted(Contract):
    CE_TYPE: ClassVar[str] = "podium.step.completed.v1"

    task_id: str
    step_id: str
    capability: str
    pool: str
    output: Any
    attempt: int
    duration_ms: float
    usage: Usage = Field(default_factory=Usage)

    @classmethod
    def for_step(
        cls,
        step: StepRequested,
        *,
        output: Any,
        duration_ms: float,
        usage: Usage | None = None,
    ) -> StepCompleted:
        """The result of ``step``: its ids, capability, pool and attempt, with ``output``."""
        return cls(
            task_id=step.task_id,
            step_id=step.step_id,
            capability=step.capability,
            pool=step.pool,
            output=output,
            attempt=step.attempt,
            duration_ms=duration_ms,
            usage=usage or Usage(),
        )


class StepFailed(Contract):
    """A step failed; recovery decides what happens next."""

    CE_TYPE: ClassVar[str] = "podium.step.failed.v1"

    task_id: str
    step_id: str
    capability: str
    pool: str
    attempt: int
    error: StepError
    duration_ms: float
    request: StepRequested = Field(description="the request that failed, for retry or DLQ")

    @classmethod
    def for_step(
        cls,
        step: StepRequested,
        *,
        error: StepError,
        duration_ms: float,
        attempt: int | None = None,
    ) -> StepFailed:
        """The failure of ``step``, carrying the request itself; ``attempt``: the one that
        failed, when the reporter counts attempts itself (the router's watchdog)."""
        return cls(
            task_id=step.task_id,
            step_id=step.step_id,
            capability=step.capability,
            pool=step.pool,
            attempt=step.attempt if attempt is None else attempt,
            error=error,
            duration_ms=duration_ms,
            request=step,
        )


class StepAbandoned(Contract):
    """Recovery gave up on a step; the router fails its task."""

    CE_TYPE: ClassVar[str] = "podium.step.abandoned.v1"

    task_id: str
    step_id: str
    attempts: int
    error: StepError
    dlq: DlqLocation | None = None

    @classmethod
    def for_failure(
        cls, failure: StepFailed, *, detail: str | None = None, dlq: DlqLocation | None = None
    ) -> StepAbandoned:
        """Recovery gives up on ``failure``'s step; ``detail`` (why) joins the error's message.
        The error's ``retry_after_s`` is left out: no attempt follows."""
        error = failure.error
        return cls(
            task_id=failure.task_id,
            step_id=failure.step_id,
            attempts=failure.attempt,
            error=StepError(
                type=error.type,
                message=f"{error.message} ({detail})" if detail else error.message,
                error_class=error.error_class,
            ),
            dlq=dlq,
        )


class TaskCancelRequested(Contract):
    """Stop dispatching a task's steps and end it as cancelled."""

    CE_TYPE: ClassVar[str] = "podium.task.cancel-requested.v1"

    task_id: str = Field(min_length=1, max_length=200)
    reason: str = ""
    tenant: str = Field(
        default="default",
        min_length=1,
        max_length=200,
        description="who asks: a task is cancelled only by its own tenant",
    )


class TaskCancelled(Contract):
    CE_TYPE: ClassVar[str] = "podium.task.cancelled.v1"

    task_id: str
    workflow: str
    reason: str
    cancelled_at: datetime
    tenant: str | None = Field(default=None, description="whose task: the submission's tenant")


class StepRetryScheduled(Contract):
    """Recovery will dispatch another attempt of a step at ``due_at``."""

    CE_TYPE: ClassVar[str] = "podium.step.retry-scheduled.v1"

    task_id: str
    step_id: str
    attempt: int = Field(description="the attempt that will run")
    pool: str
    model: str | None = None
    due_at: datetime
    error: StepError

    @classmethod
    def for_failure(
        cls, failure: StepFailed, *, attempt: int, pool: str, model: str | None, due_at: datetime
    ) -> StepRetryScheduled:
        """Recovery will run ``failure``'s step again (attempt ``attempt``, at ``due_at``)."""
        return cls(
            task_id=failure.task_id,
            step_id=failure.step_id,
            attempt=attempt,
            pool=pool,
            model=model,
            due_at=due_at,
            error=failure.error,
        )


class TaskHistoryRecorded(Contract):
    """One entry of a task's history, as the router wrote it to its own database in the
    same transaction: what happened, why, and what comes next. For readers that show
    a run's story (the api); a task's entries arrive in the order they were written."""

    CE_TYPE: ClassVar[str] = "podium.task.history-recorded.v1"

    task_id: str
    at: datetime
    # str, not HistoryKind: a new kind is an addition, which an enum would make breaking.
    kind: str = Field(description="a HistoryKind value: accepted, step_dispatched, ...")
    step_id: str | None = None
    attempt: int | None = None
    pool: str | None = None
    capability: str | None = None
    model: str | None = None
    workflow_version: int | None = None
    cause: str = Field(default="", description="why (secrets masked)")
    next: str = Field(default="", description="what happens next, when it is known")


class BreakerStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    state: Literal["closed", "open", "half_open"]
    failures: int = Field(default=0, ge=0, description="consecutive provider failures")
    retry_in_s: float | None = Field(
        default=None, ge=0, description="open: seconds until the next trial call"
    )


class RateLimitStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    per_s: float | None = Field(
        default=None, gt=0, description="capability calls/s of the whole pool; None: unlimited"
    )
    burst: int | None = Field(default=None, ge=1)


class PoolStatusReported(Contract):
    """One executor replica's state, reported every few seconds: its circuit breakers
    and its pool's rate limit (state that lives only in the replica's memory)."""

    CE_TYPE: ClassVar[str] = "podium.pool.status-reported.v1"

    pool: str = Field(min_length=1, max_length=200)
    replica: str = Field(min_length=1, max_length=400, description="host and instance")
    concurrency: int = Field(ge=1, description="steps in flight at most")
    breakers: dict[str, BreakerStatus] = Field(
        default_factory=dict, description="by provider; providers never called are absent"
    )
    rate_limit: RateLimitStatus = Field(default_factory=RateLimitStatus)
    interval_s: float = Field(gt=0, description="the next report comes within this")
    reported_at: datetime


ALL_CONTRACTS: tuple[type[Contract], ...] = (
    TaskSubmitted,
    TaskAccepted,
    TaskCompleted,
    TaskFailed,
    TaskRejected,
    StepRequested,
    StepCompleted,
    StepFailed,
    StepAbandoned,
    TaskCancelRequested,
    TaskCancelled,
    StepRetryScheduled,
    TaskHistoryRecorded,
    PoolStatusReported,
)

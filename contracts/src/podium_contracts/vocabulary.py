"""Every name that crosses the wire besides the contracts' own fields, declared once.

    trace headers   TRACEPARENT, TRACESTATE           W3C trace context in Kafka headers
    topics          TopicPattern, DLQ_SUFFIX          topic names under a prefix
    consumer groups CONSUMER_GROUP                    one group per service (and pool)
    dead letters    DLQ_HEADER_PREFIX, DlqHeader      the ``podium-dlq-*`` headers
                    DlqReason                         why a record was dead-lettered
    step errors     StepErrorType, ErrorClass         ``StepError.type`` and ``error_class``
    task errors     TaskErrorType                     ``TaskError.type`` the router writes

Services, the CLI and the tests import these names instead of restating the strings,
so a reader finds here every value an operator can filter on or a consumer can see.
The values are the wire format: renaming a member is free, changing a value is a
breaking change for whoever reads the topics.

``StepError.type`` and ``TaskError.type`` stay typed ``str`` in the contracts: a
capability may raise a type of its own, and a task fails with its abandoned step's
type, so those sets are open; the enums name the types podium itself writes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

# -- trace context ---------------------------------------------------------------------------

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
TRACE_HEADERS: Final = (TRACEPARENT, TRACESTATE)

# -- topics ----------------------------------------------------------------------------------

TOPIC_PREFIX: Final = "podium"  # the default of PODIUM_TOPIC_PREFIX
DLQ_SUFFIX: Final = ".dlq"  # a topic's dead letters go to the topic's name plus this
CONSUMER_GROUP: Final = "{prefix}-{service}"  # the executor adds "-{pool}"


class TopicPattern(StrEnum):
    """A topic's name under a prefix; ``{pool}``: one topic per executor pool."""

    TASKS = "{prefix}.tasks.v1"
    TASK_EVENTS = "{prefix}.task-events.v1"
    STEP_RESULTS = "{prefix}.step-results.v1"
    STEP_FAILURES = "{prefix}.step-failures.v1"
    STEPS = "{prefix}.steps.{pool}.v1"
    POOL_STATUS = "{prefix}.pool-status.v1"

    def under(self, prefix: str = TOPIC_PREFIX, *, pool: str = "{pool}") -> str:
        """The topic's name under ``prefix``; without ``pool``, the steps topic keeps
        its ``{pool}`` parameter (the AsyncAPI address)."""
        return self.value.format(prefix=prefix, pool=pool)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


def consumer_group(prefix: str, service: str, pool: str | None = None) -> str:
    """The Kafka consumer group of a service (of one pool, for the executor)."""
    group = CONSUMER_GROUP.format(prefix=prefix, service=service)
    return f"{group}-{pool}" if pool is not None else group


# -- dead letters ----------------------------------------------------------------------------

DLQ_HEADER_PREFIX: Final = "podium-dlq-"


class DlqReason(StrEnum):
    """Why a record is in a dead-letter topic (the ``podium-dlq-reason`` header)."""

    UNDECODABLE = "undecodable"  # not a CloudEvent with a JSON payload
    UNKNOWN_TYPE = "unknown_type"  # a ce_type or version this consumer does not read
    UNEXPECTED_TYPE = "unexpected_type"  # a known ce_type on a topic that does not carry it
    INVALID = "invalid"  # a known type whose payload fails validation
    UNKNOWN_TASK = "unknown_task"  # well-formed, about a task this reader has no record of
    PROCESSING_ERROR = "processing_error"  # the handler raised on this message
    STEP_ABANDONED = "step_abandoned"  # recovery gave up on a step
    TENANT_MISMATCH = "tenant_mismatch"  # claims a tenant other than its topic's


class DlqHeader(StrEnum):
    """A ``podium-dlq-*`` header, by its name without the prefix (as
    ``podium_shared.dlq.dlq_headers`` returns them); ``.header`` is the full name."""

    REASON = "reason"
    ERROR_TYPE = "error-type"
    ERROR_MESSAGE = "error-message"
    ORIGINAL_TOPIC = "original-topic"
    ORIGINAL_PARTITION = "original-partition"
    ORIGINAL_OFFSET = "original-offset"
    SERVICE = "service"
    ATTEMPTS = "attempts"
    TIME = "time"
    # step_abandoned only
    ERROR_CLASS = "error-class"
    TASK_ID = "task-id"
    STEP_ID = "step-id"
    ABANDONED = "abandoned"
    # a copy too large for one record: what went to the blob store, and where
    VALUE_NULL = "value-null"
    VALUE_REF = "value-ref"
    VALUE_BYTES = "value-bytes"
    VALUE_SHA256 = "value-sha256"
    HEADERS_REF = "headers-ref"
    HEADERS_BYTES = "headers-bytes"
    HEADERS_SHA256 = "headers-sha256"
    KEY_REF = "key-ref"
    KEY_BYTES = "key-bytes"
    KEY_SHA256 = "key-sha256"

    @property
    def header(self) -> str:
        """The Kafka header's full name, e.g. ``podium-dlq-reason``."""
        return DLQ_HEADER_PREFIX + self.value


# -- errors ----------------------------------------------------------------------------------

ErrorClass = Literal["retryable", "fatal"]


class StepErrorType(StrEnum):
    """The ``StepError.type`` values podium's executor and memory service write."""

    TIMEOUT = "timeout"  # no result within the step's timeout
    RATE_LIMITED = "rate_limited"  # the provider said "slow down" (HTTP 429)
    UNAVAILABLE = "unavailable"  # provider down, unreachable, or its circuit is open
    INVALID_INPUT = "invalid_input"  # the step's input does not fit the capability
    CAPABILITY_ERROR = "capability_error"  # the call failed in a way a retry will not fix
    UNKNOWN_CAPABILITY = "unknown_capability"  # the pool has no capability by that name
    TOO_LARGE = "too_large"  # the data is over MAX_DATA_BYTES (podium_shared.limits)
    FORBIDDEN = "forbidden"  # memory: the step may not touch that scope
    EGRESS_REFUSED = "egress_refused"  # a tool tried to reach an address its pool may not


class TaskErrorType(StrEnum):
    """The ``TaskError.type`` values the router writes itself; a task whose step was
    abandoned fails with the step's type, and a rejected one with its DlqReason."""

    UNKNOWN_WORKFLOW = "unknown_workflow"
    CANCELLED = "cancelled"
    BUDGET_EXCEEDED = "budget_exceeded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    TEMPLATE_ERROR = "template_error"
    TOO_LARGE = "too_large"
    LIMIT_EXCEEDED = "limit_exceeded"  # a PODIUM_ROUTER_MAX_* cap on what one task may cause
    TASK_ID_IN_USE = "task_id_in_use"  # another tenant's task holds this task_id

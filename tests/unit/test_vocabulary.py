"""The wire vocabulary (podium_contracts.vocabulary) and the result constructors.

The literal strings below are on purpose: they are what operators filter on and
other consumers read, so changing one must fail a test, not pass silently."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from podium_contracts import (
    DLQ_HEADER_PREFIX,
    DLQ_SUFFIX,
    TRACE_HEADERS,
    ContractError,
    DlqHeader,
    DlqLocation,
    DlqReason,
    InvalidMessage,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepErrorType,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    TaskErrorType,
    TenantMismatch,
    TopicPattern,
    UndecodableMessage,
    UnexpectedContract,
    UnknownContract,
    UnknownTask,
    Usage,
    asyncapi,
    consumer_group,
    dlq_topic,
    encode,
)
from podium_executor.errors import ErrorType, fatal, retryable
from podium_shared import Topics, blobs, dead_letter, dlq_headers
from podium_shared.dlq import fit, original_record
from podium_shared.limits import TOO_LARGE

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


# --- the names on the wire -------------------------------------------------------------------


def test_trace_headers_are_w3c_names() -> None:
    assert TRACE_HEADERS == ("traceparent", "tracestate")
    _, headers = encode(
        _request(), source="t", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    )
    assert "traceparent" in dict(headers)


def test_dlq_reasons_are_the_documented_values() -> None:
    assert [r.value for r in DlqReason] == [
        "undecodable",
        "unknown_type",
        "unexpected_type",
        "invalid",
        "unknown_task",
        "processing_error",
        "step_abandoned",
        "tenant_mismatch",
    ]
    assert set(asyncapi.DLQ_REASONS) == set(DlqReason), "every reason is described"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ContractError, "invalid"),
        (UndecodableMessage, "undecodable"),
        (UnknownContract, "unknown_type"),
        (UnexpectedContract, "unexpected_type"),
        (InvalidMessage, "invalid"),
        (UnknownTask, "unknown_task"),
        (TenantMismatch, "tenant_mismatch"),
    ],
)
def test_contract_errors_name_their_dlq_reason(error: type[ContractError], reason: str) -> None:
    assert error.reason is DlqReason(reason)


def test_dlq_header_names() -> None:
    assert DLQ_HEADER_PREFIX == "podium-dlq-"
    assert DlqHeader.REASON.header == "podium-dlq-reason"
    assert DlqHeader.ORIGINAL_TOPIC.header == "podium-dlq-original-topic"
    assert all(h.header == "podium-dlq-" + h.value for h in DlqHeader)


def test_every_header_a_dead_letter_writes_is_declared() -> None:
    record = dead_letter(
        topic="podium.steps.default.v1",
        partition=3,
        offset=42,
        key=b"k",
        value=b"v",
        headers=[("ce_id", b"x")],
        reason=DlqReason.STEP_ABANDONED,
        error_type=StepErrorType.TIMEOUT,
        error_message="took too long",
        service="recovery",
        extra={DlqHeader.ERROR_CLASS: "retryable", DlqHeader.ABANDONED: "exhausted"},
    )
    written = dlq_headers(record.headers)
    assert {DlqHeader(k) for k in written} >= set(asyncapi.DLQ_REQUIRED_HEADERS)
    assert written[DlqHeader.REASON] == "step_abandoned"


def test_a_copy_set_aside_names_declared_headers_and_reads_back(tmp_path: Path) -> None:
    value = b"v" * 5000
    store = blobs.FolderStore(tmp_path)
    record = fit("t.dlq", b"k", value, [("ce_id", b"x")], {}, limit=2000, store=store)
    meta = dlq_headers(record.headers)
    assert {DlqHeader.VALUE_REF, DlqHeader.VALUE_BYTES, DlqHeader.VALUE_SHA256} <= set(meta)
    assert original_record(record.key, record.value, record.headers)[1] == value


def test_topic_names_follow_the_patterns() -> None:
    assert TopicPattern.TASKS.under() == "podium.tasks.v1"
    assert TopicPattern.TASKS.under("acme") == "acme.tasks.v1"
    assert TopicPattern.STEPS.under("acme", pool="gpu") == "acme.steps.gpu.v1"
    assert TopicPattern.STEPS.under() == "podium.steps.{pool}.v1"  # the AsyncAPI address
    assert DLQ_SUFFIX == ".dlq"
    assert dlq_topic("acme.tasks.v1") == "acme.tasks.v1.dlq"
    topics = Topics("acme")
    assert (topics.tasks, topics.task_events, topics.step_results, topics.step_failures) == (
        "acme.tasks.v1",
        "acme.task-events.v1",
        "acme.step-results.v1",
        "acme.step-failures.v1",
    )
    assert topics.steps("gpu") == "acme.steps.gpu.v1"
    assert Topics.dlq(topics.tasks) == "acme.tasks.v1.dlq"


def test_consumer_group_names() -> None:
    assert consumer_group("acme", "router") == "acme-router"
    assert consumer_group("acme", "executor", "gpu") == "acme-executor-gpu"
    assert Topics("acme").group("executor", "gpu") == "acme-executor-gpu"
    assert Topics().group("memory") == "podium-memory"


def test_step_error_types() -> None:
    assert ErrorType is StepErrorType
    assert {t.value for t in StepErrorType} == {
        "timeout",
        "rate_limited",
        "unavailable",
        "invalid_input",
        "capability_error",
        "unknown_capability",
        "too_large",
        "forbidden",
        "egress_refused",
    }
    assert retryable(ErrorType.TIMEOUT, "m").error.error_class == "retryable"
    assert fatal(ErrorType.INVALID_INPUT, "m").error.model_dump(mode="json")["type"] == (
        "invalid_input"
    )


def test_too_large_is_one_value_for_steps_and_tasks() -> None:
    assert TOO_LARGE == StepErrorType.TOO_LARGE == TaskErrorType.TOO_LARGE == "too_large"


# --- constructors ------------------------------------------------------------------------------


def _request(attempt: int = 2) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="s1",
        workflow="w",
        capability="echo",
        pool="gpu",
        input={"x": 1},
        attempt=attempt,
        idempotency_key="t1/s1",
    )


def test_step_completed_for_step_copies_the_request() -> None:
    usage = Usage(cost_usd=0.5, prompt_tokens=3, completion_tokens=4)
    done = StepCompleted.for_step(_request(), output={"y": 2}, duration_ms=12.5, usage=usage)
    assert done == StepCompleted(
        task_id="t1",
        step_id="s1",
        capability="echo",
        pool="gpu",
        output={"y": 2},
        attempt=2,
        duration_ms=12.5,
        usage=usage,
    )
    assert StepCompleted.for_step(_request(), output=None, duration_ms=0).usage == Usage()


def test_step_failed_for_step_carries_the_request() -> None:
    error = StepError(type=StepErrorType.TIMEOUT, message="slow", error_class="retryable")
    failed = StepFailed.for_step(_request(), error=error, duration_ms=3.0)
    assert failed == StepFailed(
        task_id="t1",
        step_id="s1",
        capability="echo",
        pool="gpu",
        attempt=2,
        error=error,
        duration_ms=3.0,
        request=_request(),
    )
    # The router's watchdog counts attempts itself.
    assert StepFailed.for_step(_request(), error=error, duration_ms=0, attempt=5).attempt == 5


def _failure() -> StepFailed:
    error = StepError(
        type=StepErrorType.UNAVAILABLE, message="down", error_class="retryable", retry_after_s=9
    )
    return StepFailed.for_step(_request(attempt=3), error=error, duration_ms=1.0)


def test_step_abandoned_for_failure_says_why_and_drops_retry_after() -> None:
    dlq = DlqLocation(topic="podium.steps.gpu.v1.dlq", record_id="r1")
    abandoned = StepAbandoned.for_failure(_failure(), detail="3 attempt(s) failed", dlq=dlq)
    assert abandoned == StepAbandoned(
        task_id="t1",
        step_id="s1",
        attempts=3,
        error=StepError(
            type="unavailable", message="down (3 attempt(s) failed)", error_class="retryable"
        ),
        dlq=dlq,
    )
    assert StepAbandoned.for_failure(_failure()).error.message == "down"


def test_step_retry_scheduled_for_failure() -> None:
    failure = _failure()
    scheduled = StepRetryScheduled.for_failure(failure, attempt=4, pool="cpu", model="m", due_at=T0)
    assert scheduled == StepRetryScheduled(
        task_id="t1",
        step_id="s1",
        attempt=4,
        pool="cpu",
        model="m",
        due_at=T0,
        error=failure.error,
    )


def test_enum_values_serialize_as_plain_strings() -> None:
    failed = StepFailed.for_step(
        _request(), error=StepError(type=StepErrorType.FORBIDDEN, message="no"), duration_ms=0
    )
    value, _ = encode(failed, source="t")
    assert b'"type":"forbidden"' in value

"""Dead-letter records: the original bytes and headers, untouched, plus
``podium-dlq-*`` headers saying why, from where, and when.

The reason is part of the contract (``DlqReason``), not a free string, so
operators can filter on it and replay tools can reason about it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from podium_contracts import Headers
from podium_shared.outbox import OutgoingMessage
from podium_shared.topics import Topics

PREFIX = "podium-dlq-"


class DlqReason(StrEnum):
    UNDECODABLE = "undecodable"  # not a CloudEvent with a JSON payload
    UNKNOWN_TYPE = "unknown_type"  # a ce_type or version this consumer does not read
    UNEXPECTED_TYPE = "unexpected_type"  # a known ce_type on a topic that does not carry it
    INVALID = "invalid"  # a known type whose payload fails validation
    PROCESSING_ERROR = "processing_error"  # the handler raised on this message
    STEP_ABANDONED = "step_abandoned"  # recovery gave up on a step


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    reason: DlqReason,
    error_type: str,
    error_message: str,
    service: str,
    attempts: int = 1,
    extra: dict[str, str] | None = None,
) -> OutgoingMessage:
    """Build the DLQ record for a consumed message (sent through the outbox)."""
    own = [(k, v) for k, v in headers if not k.startswith(PREFIX)]
    meta = {
        "reason": reason.value,
        "error-type": error_type,
        "error-message": error_message[:2000],
        "original-topic": topic,
        "original-partition": str(partition),
        "original-offset": str(offset),
        "service": service,
        "attempts": str(attempts),
        "time": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    dlq_headers = own + [(PREFIX + k, v.encode()) for k, v in meta.items()]
    return OutgoingMessage(Topics.dlq(topic), key, value, dlq_headers)


def dlq_headers(headers: Headers) -> dict[str, str]:
    """The ``podium-dlq-*`` headers of a record, without the prefix."""
    return {k.removeprefix(PREFIX): v.decode() for k, v in headers if k.startswith(PREFIX)}

"""How a step can fail, and whether trying again can help.

    CapabilityError(type, message)        raised by a capability, reported in StepFailed
      retryable: timeout, rate_limited, unavailable
      fatal:     invalid_input, capability_error, unknown_capability, egress_refused

Recovery retries the retryable classes (with backoff, then the fallback pool;
never before the error's ``retry_after_s``, which an open circuit sets to its
next trial) and dead-letters the fatal ones at once. Any other exception a capability
raises is reported as a fatal ``capability_error`` naming the exception.
"""

from __future__ import annotations

from podium_contracts import StepError, StepErrorType

# The step error types are wire vocabulary, declared in podium_contracts; the
# executor's name for them stays.
ErrorType = StepErrorType


RETRYABLE = frozenset({ErrorType.TIMEOUT, ErrorType.RATE_LIMITED, ErrorType.UNAVAILABLE})

# Failures that say something about the provider's health (the breaker counts
# them); invalid input and unknown capabilities are the caller's fault.
PROVIDER_FAILURES = RETRYABLE | {ErrorType.CAPABILITY_ERROR}


class CapabilityError(Exception):
    """A step failure with its type; the class follows from the type unless given."""

    def __init__(
        self,
        type: str,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        if retryable is None:
            retryable = type in RETRYABLE
        self.error = StepError(
            type=type,
            message=message,
            error_class="retryable" if retryable else "fatal",
            retry_after_s=retry_after_s,
        )


def retryable(
    type: ErrorType, message: str, *, retry_after_s: float | None = None
) -> CapabilityError:
    """A failure a later attempt may not have; ``retry_after_s``: not before then."""
    return CapabilityError(type, message, retryable=True, retry_after_s=retry_after_s)


def fatal(type: ErrorType, message: str) -> CapabilityError:
    return CapabilityError(type, message, retryable=False)

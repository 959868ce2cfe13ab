"""Run one step and decide what to report: StepCompleted or StepFailed.

The order for one step: the effect ledger (a recorded key returns its result
without calling anything), the capability and its input, the provider's
circuit, the pool's rate limit, then the call within the step's timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog

from podium_contracts import StepCompleted, StepError, StepFailed, StepRequested, Usage
from podium_executor.breaker import Breakers, CircuitOpen
from podium_executor.capabilities.base import Capability, Result, StepContext
from podium_executor.errors import PROVIDER_FAILURES, CapabilityError, ErrorType, fatal, retryable
from podium_executor.ledger import Ledger
from podium_executor.ratelimit import PoolRateLimit
from podium_shared import Topics, UnitOfWork, metrics, telemetry
from podium_shared.limits import MAX_DATA_BYTES
from podium_shared.secrets import redact

log = structlog.get_logger(__name__)

Outcome = StepCompleted | StepFailed


class Executor:
    def __init__(
        self,
        capabilities: dict[str, Capability],
        topics: Topics,
        *,
        ledger: Ledger | None = None,
        breakers: Breakers | None = None,
        rate_limit: PoolRateLimit | None = None,
        default_timeout_s: float | None = None,
    ) -> None:
        self.capabilities = capabilities
        self.topics = topics
        self.ledger = ledger
        self.breakers = breakers
        self.rate_limit = rate_limit
        self.default_timeout_s = default_timeout_s

    async def run_step(self, step: StepRequested) -> Outcome:
        """Run the step, or return its recorded result; never raises for step errors."""
        with telemetry.span(
            "executor.call",
            **{
                "podium.task_id": step.task_id,
                "podium.step_id": step.step_id,
                "podium.capability": step.capability,
                "podium.pool": step.pool,
                "podium.model": step.model,
                "podium.attempt": step.attempt,
                "podium.idempotency_key": step.idempotency_key,
            },
        ):
            started = time.perf_counter()
            outcome = await self._run_step(step)
            _observe(outcome, time.perf_counter() - started)
            return outcome

    async def _run_step(self, step: StepRequested) -> Outcome:
        started = time.perf_counter()
        if self.ledger is not None:
            recorded = self.ledger.lookup(step)
            if recorded is not None:
                log.info("idempotency key seen; recorded result", key=step.idempotency_key)
                telemetry.annotate(**{"podium.recorded_result": True})
                return recorded
        try:
            output, usage = await self._call(step)
        except CapabilityError as exc:
            return self._failed(step, exc.error, started)
        return StepCompleted.for_step(
            step, output=output, duration_ms=(time.perf_counter() - started) * 1000, usage=usage
        )

    async def _call(self, step: StepRequested) -> tuple[Any, Usage]:
        capability = self.capabilities.get(step.capability)
        if capability is None:
            raise fatal(
                ErrorType.UNKNOWN_CAPABILITY,
                f"pool {step.pool!r} has no capability {step.capability!r} "
                f"(has: {', '.join(sorted(self.capabilities))})",
            )
        parsed = capability.parse(step.input)
        provider = capability.provider_of(parsed)
        telemetry.annotate(**{"podium.provider": provider})
        if self.breakers is not None:
            try:
                self.breakers.before_call(provider)
            except CircuitOpen as exc:
                # The step never reached the provider; recovery waits for the next trial.
                raise retryable(
                    ErrorType.UNAVAILABLE, str(exc), retry_after_s=exc.retry_in_s
                ) from exc
        verdict: bool | None = None
        try:
            if self.rate_limit is not None:
                await self.rate_limit.acquire()
            result = await self._within_timeout(capability, parsed, step)
            output, usage = (
                (result.output, result.usage) if isinstance(result, Result) else (result, Usage())
            )
            output = _json_safe(output, capability.name)
            verdict = True
            return output, usage
        except CapabilityError as exc:
            verdict = False if exc.error.type in PROVIDER_FAILURES else None
            raise
        finally:
            self._tell_breaker(provider, verdict)

    async def _within_timeout(
        self, capability: Capability, parsed: Any, step: StepRequested
    ) -> Any:
        timeout = step.timeout_s or self.default_timeout_s
        try:
            # asyncio.timeout, not wait_for: no extra task per step.
            async with asyncio.timeout(timeout):
                return await capability.run(parsed, StepContext.of(step))
        except CapabilityError:
            raise
        except TimeoutError as exc:
            raise retryable(ErrorType.TIMEOUT, f"no result within {timeout}s") from exc
        except Exception as exc:
            raise fatal(ErrorType.CAPABILITY_ERROR, f"{type(exc).__name__}: {exc}") from exc

    def _tell_breaker(self, provider: str, verdict: bool | None) -> None:
        if self.breakers is None:
            return
        if verdict is True:
            self.breakers.succeeded(provider)
        elif verdict is False:
            self.breakers.failed(provider)
        else:
            self.breakers.released(provider)

    def report(self, step: StepRequested, outcome: Outcome, uow: UnitOfWork) -> None:
        """Record a success in the ledger and send it to the router; failures go to recovery."""
        if isinstance(outcome, StepCompleted):
            if self.ledger is not None:
                outcome = self.ledger.record(uow.conn, step, outcome)
            uow.publish(self.topics.step_results, outcome, key=outcome.task_id)
        else:
            uow.publish(self.topics.step_failures, outcome, key=outcome.task_id)

    @staticmethod
    def _failed(step: StepRequested, error: StepError, started: float) -> StepFailed:
        # The one place a step's error becomes a message: a provider that echoes our
        # request ("Authorization: Bearer sk-...") must not put the key in the
        # StepFailed, and from there in history, the DLQ and the span.
        message = redact(error.message)
        if message != error.message:
            error = error.model_copy(update={"message": message})
        return StepFailed.for_step(
            step, error=error, duration_ms=(time.perf_counter() - started) * 1000
        )


def _observe(outcome: Outcome, seconds: float) -> None:
    """The step's latency, cost and tokens: on its span and in the metrics."""
    if isinstance(outcome, StepCompleted):
        usage = outcome.usage
        telemetry.annotate(
            **{
                "podium.outcome": "completed",
                "podium.cost_usd": usage.cost_usd,
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.completion_tokens,
            }
        )
        metrics.step_ran(
            outcome.capability,
            outcome.pool,
            "completed",
            seconds,
            cost_usd=usage.cost_usd,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        return
    error = outcome.error
    telemetry.annotate(**{"podium.outcome": "failed", "podium.error_class": error.error_class})
    telemetry.mark_failed(error.type, error.message)
    metrics.step_ran(outcome.capability, outcome.pool, "failed", seconds)


def _json_safe(output: Any, name: str) -> Any:
    """The output as it will be published (and recorded): plain JSON values."""
    try:
        encoded = orjson.dumps(output)
    except TypeError as exc:
        raise fatal(ErrorType.CAPABILITY_ERROR, f"{name}: output is not JSON: {exc}") from exc
    if len(encoded) > MAX_DATA_BYTES:
        # Its StepCompleted could never be sent: fail the step, fatally (the same
        # call makes the same output), so its task fails saying why.
        raise fatal(
            ErrorType.TOO_LARGE,
            f"{name}: output is {len(encoded)} bytes as JSON, "
            f"over the limit of {MAX_DATA_BYTES} bytes",
        )
    return orjson.loads(encoded)

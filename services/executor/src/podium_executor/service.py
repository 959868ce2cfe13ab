"""Run one step and decide what to report: StepCompleted or StepFailed."""

from __future__ import annotations

import asyncio
import time

from podium_contracts import StepCompleted, StepError, StepFailed, StepRequested
from podium_shared import Topics, UnitOfWork

from podium_executor.capabilities import Capability, CapabilityError

Outcome = StepCompleted | StepFailed


class Executor:
    def __init__(self, capabilities: dict[str, Capability], topics: Topics) -> None:
        self.capabilities = capabilities
        self.topics = topics

    async def run_step(self, step: StepRequested) -> Outcome:
        """Call the step's capability within its timeout; never raises for step errors."""
        started = time.perf_counter()
        try:
            capability = self.capabilities.get(step.capability)
            if capability is None:
                raise CapabilityError(
                    "unknown_capability",
                    f"pool {step.pool!r} has no capability {step.capability!r} "
                    f"(has: {', '.join(sorted(self.capabilities))})",
                )
            output = await asyncio.wait_for(capability(step.input), step.timeout_s)
        except CapabilityError as exc:
            return self._failed(step, exc.error, started)
        except TimeoutError:
            return self._failed(
                step,
                StepError(
                    type="timeout",
                    message=f"no result within {step.timeout_s}s",
                    error_class="retryable",
                ),
                started,
            )
        except Exception as exc:
            return self._failed(
                step,
                StepError(type="capability_error", message=f"{type(exc).__name__}: {exc}"),
                started,
            )
        return StepCompleted(
            task_id=step.task_id,
            step_id=step.step_id,
            capability=step.capability,
            pool=step.pool,
            output=output,
            attempt=step.attempt,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    def report(self, outcome: Outcome, uow: UnitOfWork) -> None:
        """Successes go to the router, failures to recovery."""
        topic = (
            self.topics.step_results
            if isinstance(outcome, StepCompleted)
            else self.topics.step_failures
        )
        uow.publish(topic, outcome, key=outcome.task_id)

    @staticmethod
    def _failed(step: StepRequested, error: StepError, started: float) -> StepFailed:
        return StepFailed(
            task_id=step.task_id,
            step_id=step.step_id,
            capability=step.capability,
            pool=step.pool,
            attempt=step.attempt,
            error=error,
            duration_ms=(time.perf_counter() - started) * 1000,
            request=step,
        )

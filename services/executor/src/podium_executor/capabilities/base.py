"""The plugin interface: a capability is a named async callable with a pydantic
input model. It receives the parsed input and the step's context (task, step,
attempt, idempotency key) and returns anything JSON-able, or a ``Result`` when
it also reports usage (tokens, cost)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

import httpx
from pydantic import BaseModel, ValidationError

from podium_contracts import StepRequested, Usage
from podium_executor.errors import CapabilityError, ErrorType, fatal
from podium_executor.settings import ExecutorSettings

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a capability knows about the step it runs."""

    task_id: str
    step_id: str
    workflow: str
    attempt: int
    idempotency_key: str  # stable across retries and replays: pass it to external systems
    tenant: str = "default"
    subject: str | None = None
    model: str | None = None  # chosen by a routing rule, or by recovery's fallback

    @classmethod
    def of(cls, step: StepRequested) -> StepContext:
        return cls(
            task_id=step.task_id,
            step_id=step.step_id,
            workflow=step.workflow,
            attempt=step.attempt,
            idempotency_key=step.idempotency_key,
            tenant=step.tenant,
            subject=step.subject,
            model=step.model,
        )


@dataclass(frozen=True, slots=True)
class Result:
    """An output plus what producing it cost."""

    output: Any
    usage: Usage = field(default_factory=Usage)


Run = Callable[[Any, StepContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    input_model: type[BaseModel]
    run: Run
    # The provider this call goes to, for its circuit breaker; default: the capability.
    provider: Callable[[Any], str] | None = None
    description: str = ""

    def parse(self, raw_input: dict[str, Any]) -> BaseModel:
        try:
            return self.input_model.model_validate(raw_input)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "input"
            raise fatal(ErrorType.INVALID_INPUT, f"{self.name}: {first['msg']} at {where}") from exc

    def provider_of(self, parsed: BaseModel) -> str:
        return self.provider(parsed) if self.provider is not None else self.name

    async def __call__(self, raw_input: dict[str, Any], ctx: StepContext) -> Any:
        return await self.run(self.parse(raw_input), ctx)


@dataclass(frozen=True, slots=True)
class Resources:
    """What capability factories may use: settings and the shared HTTP clients.

    ``http`` is for what a task names (tools): in a running executor every
    connection it opens passes the pool's egress policy. ``provider_http`` is for
    endpoints the operator configured (the LLM API); default: ``http``."""

    settings: ExecutorSettings
    http: httpx.AsyncClient
    provider_http: httpx.AsyncClient | None = None

    @property
    def operator_http(self) -> httpx.AsyncClient:
        return self.provider_http or self.http


def capability(
    name: str, *, provider: Callable[[Any], str] | None = None, description: str = ""
) -> Callable[[Callable[[M, StepContext], Awaitable[Any]]], Capability]:
    """Make a ``Capability`` of an async function whose first parameter is annotated
    with its pydantic input model::

        @capability("weather.lookup")
        async def lookup(data: CityInput, ctx: StepContext) -> dict[str, Any]: ...
    """

    def wrap(fn: Callable[[M, StepContext], Awaitable[Any]]) -> Capability:
        params = list(inspect.signature(fn).parameters)
        model = get_type_hints(fn).get(params[0]) if params else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{name}: the first parameter must be annotated with a pydantic model")
        return Capability(
            name=name,
            input_model=model,
            run=fn,
            provider=provider,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0],
        )

    return wrap


__all__ = ["Capability", "CapabilityError", "Resources", "Result", "StepContext", "capability"]

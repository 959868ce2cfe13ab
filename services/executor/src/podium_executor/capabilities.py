"""Capabilities: named async callables with a pydantic input model.

Raise ``CapabilityError`` to fail a step with a class the recovery service
understands; any other exception is reported as a fatal ``capability_error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from podium_contracts import StepError
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CapabilityError(Exception):
    def __init__(self, type: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.error = StepError(
            type=type, message=message, error_class="retryable" if retryable else "fatal"
        )


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    input_model: type[BaseModel]
    run: Callable[[Any], Awaitable[Any]]

    async def __call__(self, raw_input: dict[str, Any]) -> Any:
        try:
            parsed = self.input_model.model_validate(raw_input)
        except ValidationError as exc:
            raise CapabilityError(
                "invalid_input",
                f"{self.name}: {exc.errors()[0]['msg']} "
                f"at {'.'.join(map(str, exc.errors()[0]['loc']))}",
            ) from exc
        return await self.run(parsed)


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    seconds: float = Field(ge=0, le=3600)


async def _echo(data: AnyInput) -> Any:
    return data.model_dump()


async def _sleep(data: SleepInput) -> Any:
    await asyncio.sleep(data.seconds)
    return data.model_dump()


BUILTINS: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability("echo", AnyInput, _echo),
        Capability("sleep", SleepInput, _sleep),
    )
}

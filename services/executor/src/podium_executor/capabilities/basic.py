"""echo and sleep: the smallest capabilities, for wiring and load tests."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from podium_executor.capabilities.base import StepContext, capability


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    seconds: float = Field(ge=0, le=3600)


@capability("echo")
async def echo(data: AnyInput, _ctx: StepContext) -> Any:
    """Return the input."""
    return data.model_dump()


@capability("sleep")
async def sleep(data: SleepInput, _ctx: StepContext) -> Any:
    """Wait, then return the input: an I/O-bound step of known length."""
    await asyncio.sleep(data.seconds)
    return data.model_dump()

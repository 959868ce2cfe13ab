"""Drill capabilities, to rehearse failure on a real deployment.

- ``flaky``: fails with a retryable error on the first ``fail_attempts`` attempts
  of a step, then succeeds (returns its input).
- ``fail``: fails with the class in ``error`` unless the file ``unless_exists``
  exists; create the file to "fix" the fault.
- ``effect.record``: an idempotent external side effect: appends one JSON line
  ``{"key", "task_id", "step_id", "value"}`` to ``path`` unless a line with the
  step's idempotency key is already there. Counting lines per key shows whether
  keys stayed stable through retries, crashes and replays.

They are not capabilities of a production executor: ``effect.record`` appends to a
file its input names and ``fail`` answers whether a file exists. The registry offers
them only when ``PODIUM_DRILLS`` is set (tests and drills set it), and every file
they touch must lie under their root (``PODIUM_DRILLS_ROOT``, default
``PODIUM_HOME``) once resolved: ``..`` or a symbolic link out of it is a fatal
``forbidden`` step error.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from podium_contracts import ErrorClass
from podium_executor.capabilities.base import Capability, StepContext, capability
from podium_executor.errors import ErrorType, fatal, retryable


class FlakyInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    fail_attempts: int = Field(default=1, ge=0)


class FailInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: ErrorClass = "fatal"
    message: str = "drill failure"
    unless_exists: str | None = None


class EffectInput(BaseModel):
    path: str = Field(min_length=1)
    value: Any = None
    # Keep the step in flight after the effect, before its result is recorded:
    # the worst moment to crash, for drills.
    hold_s: float = Field(default=0.0, ge=0, le=3600)


def confine(root: Path, raw: str, capability_name: str) -> Path:
    """``raw`` resolved (symbolic links followed), refused unless it lies under ``root``."""
    base = root.resolve()
    path = (base / raw).resolve()  # an absolute raw replaces base
    if not path.is_relative_to(base):
        raise fatal(
            ErrorType.FORBIDDEN,
            f"{capability_name}: {raw!r} is outside the drills root {str(base)!r}",
        )
    return path


@capability("flaky")
async def flaky(data: FlakyInput, ctx: StepContext) -> Any:
    """Fail retryably on the first fail_attempts attempts, then echo the input."""
    if ctx.attempt <= data.fail_attempts:
        raise retryable(
            ErrorType.UNAVAILABLE,
            f"flaky: attempt {ctx.attempt} of the first {data.fail_attempts} fails",
        )
    return data.model_dump()


def record_once(path: Path, line: dict[str, Any]) -> bool:
    """Append ``line`` unless one with its key is there; True when appended.
    An exclusive lock makes check-and-append atomic across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            for existing in f:
                if existing.strip() and orjson.loads(existing).get("key") == line["key"]:
                    return False
            f.write(orjson.dumps(line) + b"\n")
            f.flush()
            return True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_drills(root: Path) -> list[Capability]:
    """The drill capabilities, their files confined to ``root``."""

    @capability("fail")
    async def fail(data: FailInput, _ctx: StepContext) -> Any:
        """Fail with the given class, unless the file unless_exists exists."""
        if data.unless_exists and confine(root, data.unless_exists, "fail").exists():
            return data.model_dump()
        if data.error == "retryable":
            raise retryable(ErrorType.UNAVAILABLE, data.message)
        raise fatal(ErrorType.CAPABILITY_ERROR, data.message)

    @capability("effect.record")
    async def effect_record(data: EffectInput, ctx: StepContext) -> Any:
        """Append one line per idempotency key to a file."""
        path = confine(root, data.path, "effect.record")
        line = {
            "key": ctx.idempotency_key,
            "task_id": ctx.task_id,
            "step_id": ctx.step_id,
            "value": data.value,
            "pid": os.getpid(),  # which replica acted: a drill can then kill the one mid-step
        }
        appended = await asyncio.to_thread(record_once, path, line)
        if data.hold_s:
            await asyncio.sleep(data.hold_s)
        return {"key": ctx.idempotency_key, "appended": appended, "value": data.value}

    return [flaky, fail, effect_record]

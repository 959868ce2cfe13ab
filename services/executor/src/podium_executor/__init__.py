"""podium executor: capability plugins, pools, bounded and idempotent execution."""

from podium_executor.capabilities import (
    Capability,
    CapabilityError,
    Resources,
    Result,
    StepContext,
    capability,
)
from podium_executor.errors import ErrorType
from podium_executor.settings import ExecutorSettings

__all__ = [
    "Capability",
    "CapabilityError",
    "ErrorType",
    "ExecutorSettings",
    "Resources",
    "Result",
    "StepContext",
    "capability",
]

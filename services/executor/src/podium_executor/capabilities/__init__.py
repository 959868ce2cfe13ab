"""Capabilities: named async callables with a pydantic input model, discovered
from the built-ins, the ``podium.capabilities`` entry points and settings."""

from podium_executor.capabilities.base import (
    Capability,
    Resources,
    Result,
    StepContext,
    capability,
)
from podium_executor.capabilities.registry import (
    BUILTINS,
    GROUP,
    PluginError,
    builtin_capabilities,
    discover,
)
from podium_executor.errors import CapabilityError

__all__ = [
    "BUILTINS",
    "GROUP",
    "Capability",
    "CapabilityError",
    "PluginError",
    "Resources",
    "Result",
    "StepContext",
    "builtin_capabilities",
    "capability",
    "discover",
]

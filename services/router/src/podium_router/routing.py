"""Which pool runs a step: the step's own pool, else its capability family's."""

from __future__ import annotations

from podium_router.workflows import StepDef

# Capability families served by a dedicated pool; everything else runs on "default".
FAMILY_POOLS = {"memory": "memory"}
DEFAULT_POOL = "default"


def pool_for(step: StepDef) -> str:
    if step.pool:
        return step.pool
    family = step.uses.split(".", 1)[0]
    return FAMILY_POOLS.get(family, DEFAULT_POOL)

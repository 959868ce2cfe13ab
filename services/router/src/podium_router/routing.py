"""The routing decision: which pool (and model) runs a step.

The step's ``route`` rules are tried in order and the first whose ``when``
holds (or that has no ``when``) wins; without a matching rule the step's own
``pool`` applies, else its capability family's pool (``memory.*`` → memory),
else ``default``. The returned reason names the rule, for the history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from podium_router.expressions import evaluate
from podium_router.workflows import StepDef, Workflow

FAMILY_POOLS = {"memory": "memory"}
DEFAULT_POOL = "default"


@dataclass(frozen=True, slots=True)
class Route:
    pool: str
    model: str | None
    reason: str
    rule: int | None = None  # the 1-based index of the rule that matched


def pool_for(step: StepDef) -> str:
    """The pool when no rule matches."""
    if step.pool:
        return step.pool
    return FAMILY_POOLS.get(step.uses.split(".", 1)[0], DEFAULT_POOL)


def pools_of(workflows: Iterable[Workflow]) -> set[str]:
    """Every pool a step of these workflows can run on: its own, its rules', its fallback's.

    The router declares their topics and dead-letter topics at start-up: on a broker
    that does not create topics on first use, a step (or recovery's dead letter of it)
    for a pool no executor has started yet could not be written otherwise."""
    pools = {DEFAULT_POOL, *FAMILY_POOLS.values()}
    for wf in workflows:
        for step in wf.steps:
            pools.add(pool_for(step))
            pools.update(rule.pool for rule in step.route if rule.pool)
            if step.fallback is not None and step.fallback.pool:
                pools.add(step.fallback.pool)
    return pools


def choose_route(step: StepDef, context: Mapping[str, Any]) -> Route:
    """Evaluate the step's rules over task and step data; raises ExpressionError."""
    for i, rule in enumerate(step.route, start=1):
        if rule.when is None or bool(evaluate(rule.when, context)):
            pool = rule.pool or pool_for(step)
            why = f"rule {i} matched" + (f": {rule.when}" if rule.when else " (no condition)")
            return Route(pool, rule.model, why, rule=i)
    source = (
        "step pool"
        if step.pool
        else "capability family"
        if step.uses.split(".", 1)[0] in FAMILY_POOLS
        else "default pool"
    )
    return Route(pool_for(step), None, f"no rule matched; {source}" if step.route else source)

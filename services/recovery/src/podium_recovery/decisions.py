"""What to do with a failed step. Retries and fallbacks arrive with the recovery
issue; until then every failure is abandoned and dead-lettered, so nothing is lost
and the operator sees it."""

from __future__ import annotations

from enum import StrEnum

from podium_contracts import StepFailed


class Decision(StrEnum):
    ABANDON = "abandon"


def decide(_failure: StepFailed) -> Decision:
    return Decision.ABANDON

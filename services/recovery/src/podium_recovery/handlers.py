"""Recovery's edge: a decoded StepFailed → one use case."""

from __future__ import annotations

from podium_contracts import StepFailed
from podium_recovery.service import Recovery
from podium_shared import Handler
from podium_shared.dispatch import UseCases, apply_by_type


def use_cases(recovery: Recovery) -> UseCases:
    return {StepFailed: recovery.step_failed}


def make_handler(recovery: Recovery) -> Handler[None]:
    return Handler(apply=apply_by_type("recovery", use_cases(recovery)))

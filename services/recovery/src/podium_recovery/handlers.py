"""Recovery's edge: a decoded StepFailed → one use case."""

from __future__ import annotations

from podium_contracts import Event, StepFailed
from podium_recovery.service import Recovery
from podium_shared import Handler, UnitOfWork


def make_handler(recovery: Recovery) -> Handler[None]:
    def apply(event: Event, _result: None, uow: UnitOfWork) -> None:
        if not isinstance(event.payload, StepFailed):
            raise TypeError(f"recovery does not handle {type(event.payload).__name__}")
        recovery.step_failed(event.payload, uow)

    return Handler(apply=apply)

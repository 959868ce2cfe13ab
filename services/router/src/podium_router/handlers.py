"""The router's edge: each decoded event type → one use case."""

from __future__ import annotations

from podium_contracts import (
    Event,
    StepAbandoned,
    StepCompleted,
    StepRetryScheduled,
    TaskCancelRequested,
    TaskSubmitted,
)
from podium_router.service import Router
from podium_shared import Handler, UnitOfWork
from podium_shared.dispatch import UseCases, apply_by_type


def use_cases(router: Router) -> UseCases:
    return {
        TaskSubmitted: router.accept_task,
        StepCompleted: router.step_completed,
        StepRetryScheduled: router.retry_scheduled,
        StepAbandoned: router.step_abandoned,
        TaskCancelRequested: router.cancel_task,
    }


def make_handler(router: Router) -> Handler[None]:
    apply = apply_by_type("the router", use_cases(router))

    def bound(event: Event, result: None, uow: UnitOfWork) -> None:
        apply(router.bind(event), result, uow)

    return Handler(apply=bound, refused=router.reject, batch=router.batch)

"""The router's edge: route each decoded event to one use case."""

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


def make_handler(router: Router) -> Handler[None]:
    def apply(event: Event, _result: None, uow: UnitOfWork) -> None:
        match event.payload:
            case TaskSubmitted() as task:
                router.accept_task(task, uow)
            case StepCompleted() as result:
                router.step_completed(result, uow)
            case StepRetryScheduled() as retry:
                router.retry_scheduled(retry, uow)
            case StepAbandoned() as abandoned:
                router.step_abandoned(abandoned, uow)
            case TaskCancelRequested() as cancel:
                router.cancel_task(cancel, uow)
            case other:
                raise TypeError(f"the router does not handle {type(other).__name__}")

    return Handler(apply=apply, refused=router.reject)

"""A service's edge as a table: each contract type it reads, mapped to the one use
case that handles it, or to ``None`` when it is read and ignored on purpose.

A type missing from the table is a wiring bug (a topic carries what the service
was not written for): ``TypeError``, which the consume loop dead-letters as a
processing error rather than dropping the message in silence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from podium_contracts import Contract, Event
from podium_shared.outbox import UnitOfWork

UseCase = Callable[[Any, UnitOfWork], object]
UseCases = Mapping[type[Contract], UseCase | None]


def apply_by_type(service: str, use_cases: UseCases) -> Callable[[Event, Any, UnitOfWork], None]:
    """A ``Handler.apply`` that runs the use case of the event's contract type."""

    def apply(event: Event, _result: Any, uow: UnitOfWork) -> None:
        payload = event.payload
        # Along the MRO, not by exact type: a later minor or major version of a contract
        # may subclass the one a use case was written for (TaskSubmittedV2 is a
        # TaskSubmitted), and it must reach that use case, as a `match` on the class did.
        for cls in type(payload).__mro__:
            if cls in use_cases:
                use_case = use_cases[cls]
                if use_case is not None:
                    use_case(payload, uow)
                return
        raise TypeError(f"{service} does not handle {type(payload).__name__}")

    return apply

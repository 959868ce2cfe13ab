"""Per-provider circuit breakers: after ``failures`` consecutive provider
failures the circuit opens and calls fail fast for ``cooldown_s``; then one
trial call is let through (half-open): success closes it, failure reopens it.

    closed ──N failures──▶ open ──cooldown──▶ half-open ──ok──▶ closed
                             ▲                    │
                             └──────failure───────┘

State lives in the replica's memory: each replica learns on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    def __init__(self, provider: str, retry_in_s: float) -> None:
        super().__init__(
            f"circuit for provider {provider!r} is open; next trial in {retry_in_s:.1f}s"
        )
        self.provider = provider
        self.retry_in_s = retry_in_s


@dataclass
class _Circuit:
    state: State = State.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_running: bool = False


class Breakers:
    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def state(self, provider: str) -> State:
        return self._circuits.get(provider, _Circuit()).state

    def snapshot(self) -> dict[str, tuple[State, int, float | None]]:
        """Every provider called so far: (state, consecutive failures, seconds until
        an open circuit lets a trial call through). An open circuit whose cooldown has
        passed is half-open: the next call is its trial."""
        now = self._clock()
        out: dict[str, tuple[State, int, float | None]] = {}
        for provider, c in self._circuits.items():
            state, retry_in = c.state, None
            if state is State.OPEN:
                retry_in = max(0.0, self._cooldown_s - (now - c.opened_at))
                if retry_in == 0.0:
                    state, retry_in = State.HALF_OPEN, None
            out[provider] = (state, c.failures, retry_in)
        return out

    def before_call(self, provider: str) -> None:
        """Raise ``CircuitOpen`` unless a call to this provider may go ahead."""
        c = self._circuits.setdefault(provider, _Circuit())
        if c.state is State.CLOSED:
            return
        waited = self._clock() - c.opened_at
        if c.state is State.OPEN and waited >= self._cooldown_s:
            c.state, c.trial_running = State.HALF_OPEN, False
        if c.state is State.HALF_OPEN and not c.trial_running:
            c.trial_running = True
            return
        raise CircuitOpen(provider, max(0.0, self._cooldown_s - waited))

    def succeeded(self, provider: str) -> None:
        self._circuits[provider] = _Circuit()

    def failed(self, provider: str) -> None:
        c = self._circuits.setdefault(provider, _Circuit())
        c.failures += 1
        if c.state is State.HALF_OPEN or c.failures >= self._threshold:
            c.state, c.opened_at, c.trial_running = State.OPEN, self._clock(), False

    def released(self, provider: str) -> None:
        """The call ended without a verdict (cancelled, invalid input): free the trial."""
        c = self._circuits.get(provider)
        if c is not None and c.state is State.HALF_OPEN:
            c.trial_running = False

"""Time for unit tests that moves only when the test moves it, or when everything waits.

``FakeClock`` is a callable returning seconds, for a unit that takes a clock
(``Breakers``, ``PoolRateLimit``, ``ClaimingRelay``, recovery's timer loop): the
test moves it with ``advance``.

``run_in_virtual_time(clock, main)`` runs a coroutine on an event loop whose time
is that clock. The loop runs everything that is ready at once, and when nothing
is ready it jumps its clock to the next timer instead of waiting for it: an
``asyncio.sleep(0.2)`` takes 0.2 virtual seconds and no real ones, whatever the
machine's load, so a test can assert how long something took, exactly.

Only for code that waits on timers and other tasks: a thread or a socket that has
not answered yet is not seen while a timer is pending (virtual time would pass
without it), so a unit under test that hands work to threads or the network needs
real time and a poll-until with a deadline instead.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class FakeClock:
    """Seconds since the epoch, standing still until advanced."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not go back"
        self.now += seconds


class _VirtualSelector(selectors.BaseSelector):
    """The loop's real selector, asked never to block while a timer is pending:
    the time it would have blocked for passes instead, on the loop and the clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer at all: only I/O (a thread's result) can wake the loop.
            return self._real.select(None)
        self._loop.advance(timeout)
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Its time starts at 0 and moves with ``clock``. Not the clock's own value: the
    loop runs a timer once its time is within 1 ns of it, and at epoch-sized values
    a float cannot get that close (its step there is 0.24 µs), so it would spin."""

    def __init__(self, clock: FakeClock) -> None:
        self._virtual_now = 0.0
        self._fake_clock = clock
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds
        self._fake_clock.advance(seconds)


def run_in_virtual_time(clock: FakeClock, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a loop whose time is ``clock``."""
    factory: Callable[[], asyncio.AbstractEventLoop] = lambda: VirtualTimeLoop(clock)  # noqa: E731
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)

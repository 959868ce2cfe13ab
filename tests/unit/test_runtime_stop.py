"""Stopping a service's tasks: every one ends, even one whose cancellation Python 3.11's
``asyncio.wait_for`` swallows."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from podium_shared.runtime import cancel_all

pytestmark = pytest.mark.unit


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    # The relay's loop: wait for a wake-up with a timeout, then go round again.
    wake = asyncio.Event()
    rounds = 0

    async def relay_like() -> None:
        nonlocal rounds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 10)
            wake.clear()
            rounds += 1

    task = asyncio.create_task(relay_like())
    await asyncio.sleep(0)  # it waits in wait_for now
    # The wake-up and the cancellation arrive together: on 3.11 wait_for returns the
    # wake-up's result and drops the cancellation, and the loop goes on.
    wake.set()
    stopping = asyncio.create_task(cancel_all([task]))
    await asyncio.wait([stopping], timeout=5)
    try:
        assert stopping.done(), f"still running after {rounds} more rounds"
        assert task.cancelled()
    finally:
        task.cancel()  # so that a failure leaves nothing running
        await asyncio.gather(stopping, task, return_exceptions=True)

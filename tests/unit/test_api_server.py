"""uvicorn inside the service's event loop: it serves, it stops when the runtime
cancels its task, it wakes the relay from the routes' threads, and a port it cannot
bind fails the task (the runtime's clean stop) instead of exiting the process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from podium.stack import free_port
from podium_api.http import serve_http
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit


class Relay:
    def __init__(self) -> None:
        self.woken = 0

    def notify(self) -> None:
        self.woken += 1


def app_waking(notify: Callable[[], None]) -> FastAPI:
    app = FastAPI()

    @app.post("/wake")
    def wake() -> dict[str, bool]:  # a plain route: it runs in the thread pool
        notify()
        return {"ok": True}

    return app


async def test_it_serves_wakes_the_relay_and_stops_when_cancelled() -> None:
    port = free_port()
    relay = Relay()
    task = asyncio.create_task(serve_http(app_waking, "127.0.0.1", port)(relay))  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def up() -> bool:
            try:
                return (await client.post("/wake")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(up, 20, "the server answering")
        await wait_until(lambda: relay.woken >= 1, 5, "the relay woken")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        with pytest.raises(httpx.TransportError):
            await client.post("/wake")


async def test_a_port_it_cannot_bind_fails_the_task() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = serve_http(app_waking, "127.0.0.1", port)
        with pytest.raises(RuntimeError, match="could not listen"):
            await asyncio.wait_for(run(Relay()), 20)  # type: ignore[arg-type]

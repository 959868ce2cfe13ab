"""The HTTP server inside the service's process: uvicorn serving the app on the
service's own event loop, as one of the runtime's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

from podium_shared import OutboxRelay

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The runtime owns SIGTERM/SIGINT (it stops consuming, drains the outbox, then
        # cancels this task); uvicorn's own handlers would take the signal from it.
        yield


async def _serve(server: uvicorn.Server) -> None:
    # uvicorn exits the process (SystemExit) when it cannot bind; inside a task that
    # would bypass the runtime's shutdown (outbox drain, readiness file), so it is
    # turned into the task's failure.
    try:
        await server.serve()
    except SystemExit:
        log.error("the HTTP server did not start")


def serve_http(
    make_app: Callable[[Callable[[], None]], FastAPI], host: str, port: int
) -> Callable[[OutboxRelay], Coroutine[Any, Any, None]]:
    """A background-task factory for ``ServiceSpec.background``: serve the app built
    by ``make_app(notify)``, where ``notify`` wakes the relay from any thread."""

    async def run(relay: OutboxRelay) -> None:
        loop = asyncio.get_running_loop()

        def notify() -> None:
            # Routes run in FastAPI's thread pool; the relay's wake-up is the loop's.
            loop.call_soon_threadsafe(relay.notify)

        app = make_app(notify)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # structlog's configuration, as the rest of the process
            access_log=False,
            lifespan="off",
        )
        server = _Server(config)
        serving = asyncio.ensure_future(_serve(server))
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True  # finish the requests in flight, then return
            changes = getattr(app.state, "changes", None)
            if changes is not None:
                changes.close()  # live streams never finish by themselves
            await serving
            raise
        if not server.started:
            # The service must not run without its API: the runtime stops it cleanly.
            raise RuntimeError(f"the HTTP server could not listen on {host}:{port}")

    return run

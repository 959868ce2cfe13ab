"""The bench's DBOS application (``podium_bench.dbos_peer``): ``hello`` runs one
``echo`` step, ``chain3`` three in a row, each an ``@DBOS.step``; a bare ASGI app
runs them for HTTP callers (``POST /hello`` with a JSON body answers the output).
Imported by the worker process only."""

from __future__ import annotations

import json
from typing import Any

from dbos import DBOS


@DBOS.step()
async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the input."""
    return payload


@DBOS.workflow()
async def hello(payload: dict[str, Any]) -> dict[str, Any]:
    return await echo(payload)


@DBOS.workflow()
async def chain3(payload: dict[str, Any]) -> dict[str, Any]:
    one = await echo(payload)
    two = await echo({"from_one": one})
    return await echo({"from_two": two})


WORKFLOWS: dict[str, Any] = {"hello": hello, "chain3": chain3}


def launch(database_url: str) -> None:
    """DBOS with its system database on ``database_url`` (created and migrated)."""
    DBOS(
        config={
            "name": "podium-bench",
            "system_database_url": database_url,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    name = scope["path"].strip("/")
    if name == "health":
        await _send(send, 200, b'{"ok": true}')
        return
    workflow = WORKFLOWS.get(name)
    if workflow is None or scope["method"] != "POST":
        await _send(send, 404, b'{"detail": "no such workflow"}')
        return
    out = await workflow(json.loads(body or b"{}"))
    await _send(send, 200, json.dumps(out).encode())

"""The bench's Restate service (``podium_bench.restate_peer``): ``hello`` runs one
``echo`` step, ``chain3`` three in a row, each a ``ctx.run``. Imported by the worker
process only. No ``from __future__ import annotations``: the SDK reads the handlers'
annotations at run time to choose their serde."""

from typing import Any

import restate

bench = restate.Service("bench")


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the input."""
    return payload


@bench.handler()
async def hello(ctx: restate.Context, payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = await ctx.run_typed("echo", echo, payload=payload)
    return out


@bench.handler()
async def chain3(ctx: restate.Context, payload: dict[str, Any]) -> dict[str, Any]:
    one: dict[str, Any] = await ctx.run_typed("echo", echo, payload=payload)
    two: dict[str, Any] = await ctx.run_typed("echo", echo, payload={"from_one": one})
    three: dict[str, Any] = await ctx.run_typed("echo", echo, payload={"from_two": two})
    return three


app = restate.app(services=[bench])

"""The tracing tax: throughput of `hello` on two stacks, PODIUM_TRACING=off and
local."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podium.client import PodiumClient
from podium.stack import Stack
from podium_bench.drivers import closed_loop, podium_call, warm
from podium_bench.options import PeerOptions
from podium_bench.stats import median, ratio
from podium_shared import Settings


async def _tracing_runs(
    settings: Settings, mode: str, opts: PeerOptions, advance: Callable[[str], None]
) -> list[float]:
    runs = []
    async with PodiumClient(settings) as client:
        call = podium_call(client, "hello")
        for r in range(opts.repeat):
            advance(f"tracing {mode}: throughput, run {r + 1}/{opts.repeat}")
            await warm(call, opts.warmup)
            done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
            runs.append(done / elapsed)
    return runs


def tracing_tax(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    by_mode: dict[str, float] = {}
    for mode in ("off", "local"):
        home = Path(tempfile.mkdtemp(prefix="podium-bench-tracing-"))
        s = settings.model_copy(update={"home": home, "topic_prefix": f"btr{uuid.uuid4().hex[:6]}"})
        with Stack(s, env={"PODIUM_TRACING": mode}) as stack:
            runs = asyncio.run(_tracing_runs(stack.settings, mode, opts, advance))
        shutil.rmtree(home, ignore_errors=True)
        by_mode[mode] = median(runs)
    return {
        "measured": True,
        "tasks_per_s": by_mode,
        "on_over_off": ratio(by_mode["local"], by_mode["off"]),
    }

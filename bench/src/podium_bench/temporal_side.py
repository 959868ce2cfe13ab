"""The Temporal side: the same latency, throughput and scaling runs against
Temporal's dev server and worker processes (podium_bench.temporal)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podium_bench import temporal as bt
from podium_bench.drivers import Call, measure_latency, measure_throughput
from podium_bench.options import PeerOptions
from podium_bench.peers import measure_closed_one
from podium_bench.scaling import scaling_figure


def temporal_side(opts: PeerOptions, advance: Callable[[str], None]) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="podium-bench-temporal-"))
    out: dict[str, Any] = {"version": bt.temporal_version()}
    advance("Temporal dev server starting")
    with bt.TemporalServer(home / "server.log") as server:
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        with bt.WorkerPool(server.address, queue, home) as pool:
            pool.spawn(1)

            async def measure() -> None:
                client = await bt.connect(server.address)

                def temporal_call(workflow: str) -> Call:
                    async def call(i: int) -> None:
                        await bt.run_workflow(client, workflow, {"i": i}, queue)

                    return call

                out["latency"] = {
                    workflow: await measure_latency(
                        temporal_call(workflow), "Temporal", workflow, opts, advance
                    )
                    for workflow in ("hello", "chain3")
                }
                call = temporal_call("hello")
                out["throughput"] = await measure_throughput(call, "Temporal", opts, advance)
                out["closed_one"] = await measure_closed_one(call, "Temporal", opts, advance)

            asyncio.run(measure())
        scaling: dict[str, list[float]] = {str(n): [] for n in opts.replicas}
        for r in range(opts.repeat):
            for n in opts.replicas:
                advance(f"Temporal scaling, {n} worker(s), run {r + 1}/{opts.repeat}")
                steps, seconds = bt.measure_scaling(
                    server.address,
                    home,
                    n,
                    opts.scaling_concurrency,
                    opts.sleep_s,
                    opts.scaling_seconds,
                )
                scaling[str(n)].append(steps / seconds)
        out["scaling"] = scaling_figure(scaling, opts)
    shutil.rmtree(home, ignore_errors=True)
    return out

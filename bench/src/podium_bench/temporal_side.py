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
from podium_bench.drivers import Call, open_loop, throughput, throughput_figure, warm
from podium_bench.options import PeerOptions
from podium_bench.processes import system_processes
from podium_bench.scaling import scaling_figure
from podium_bench.stats import median_of, summary


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

                out["latency"] = {}
                for workflow in ("hello", "chain3"):
                    call = temporal_call(workflow)
                    runs, samples = [], []
                    for r in range(opts.repeat):
                        advance(f"Temporal {workflow} latency, run {r + 1}/{opts.repeat}")
                        await warm(call, opts.warmup)
                        lat = await open_loop(call, opts.rate_per_s, opts.latency_s)
                        runs.append(summary(lat))
                        samples.extend(lat)
                    out["latency"][workflow] = {
                        "runs": runs,
                        "median": median_of(runs),
                        "samples": samples,
                    }
                call = temporal_call("hello")
                tput = []
                for r in range(opts.repeat):
                    advance(f"Temporal throughput, run {r + 1}/{opts.repeat}")
                    await warm(call, opts.warmup)
                    tput.append(await throughput(call, opts, system_processes("temporal")))
                out["throughput"] = throughput_figure(tput)

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

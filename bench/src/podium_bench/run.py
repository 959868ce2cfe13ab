"""`podium bench`: podium beside Temporal, Restate and DBOS on the same machine in the same run
(issues 8 and 18), every figure beside a baseline measured in that run. One module per
section; this one runs them in order and writes the outputs (podium_bench.report).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from podium_bench.api import api_section
from podium_bench.machine import machine, versions
from podium_bench.memory import memory_section
from podium_bench.options import PeerOptions
from podium_bench.peers import peer_side
from podium_bench.peers import stages as peer_stages
from podium_bench.podium_side import podium_side
from podium_bench.recovery import recovery_drill
from podium_bench.recovery_service import recovery_service_section
from podium_bench.report import jsonable, write_api_only, write_outputs
from podium_bench.scaling import podium_scaling
from podium_bench.stack_postgres import stages as postgres_stages
from podium_bench.stack_scaling import stack_scaling
from podium_bench.targets import targets
from podium_bench.temporal_side import temporal_side
from podium_bench.tracing import tracing_tax
from podium_shared import Settings

API_STAGES = 5  # podium_bench.api's stages: reads on SQLite and PostgreSQL, three stack runs


@contextlib.contextmanager
def stage_progress(console: Console, stages: int) -> Iterator[Callable[[str], None]]:
    """A progress bar of ``stages`` steps; yields ``advance(what)``, which names the
    stage starting now (the first call only names it), and fills the bar at the end."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("starting", total=stages)
        first = True

        def advance(what: str) -> None:
            nonlocal first
            progress.update(bar, description=what, advance=0 if first else 1)
            first = False

        yield advance
        progress.update(bar, completed=stages, description="done")


def run_peer_bench(
    settings: Settings, opts: PeerOptions, console: Console | None = None
) -> dict[str, Any]:
    """Every figure, in one run; writes the report, results.json and the plots."""
    console = console or Console(stderr=True)
    stages = (
        opts.repeat * (2 + 2 + 1 + 1)
        + 1
        + (1 if opts.profile else 0)
        + postgres_stages(opts)
        + opts.repeat
        + opts.repeat * len(opts.stack_replicas)  # whole-stack scaling: a stack per n per run
        + opts.repeat
        + opts.repeat  # the broker's own failover, beside each recovery drill
        + (1 + opts.repeat * (2 + 1 + 1 + len(opts.replicas)) if opts.temporal else 0)
        + sum(peer_stages(opts) for p in ("restate", "dbos") if p in opts.peers)
        + 2 * opts.repeat  # the tracing tax: off and local
        + 3
        + (API_STAGES if opts.api else 0)
    )
    results: dict[str, Any] = {"options": jsonable(asdict(opts)), "figures": {}}
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    figures = results["figures"]
    started = time.perf_counter()
    with stage_progress(console, stages) as advance:
        figures["podium"] = podium_side(settings, opts, advance)
        if opts.temporal:
            figures["temporal"] = temporal_side(opts, advance)
        else:
            figures["temporal"] = {"skipped": "not chosen (`--peers`, `--no-temporal`)"}
        for peer in ("restate", "dbos"):
            figures[peer] = (
                peer_side(peer, opts, advance)
                if peer in opts.peers
                else {"skipped": "not chosen (`--peers`)"}
            )
        figures["podium"]["scaling"] = podium_scaling(settings, opts, advance)
        figures["stack_scaling"] = stack_scaling(settings, opts, advance)
        figures["recovery"] = recovery_drill(settings, opts, advance)
        figures["tracing"] = tracing_tax(settings, opts, advance)
        advance("memory store")
        figures["memory"] = memory_section(opts)
        advance("recovery service section")
        figures["recovery_service"] = recovery_service_section(settings, opts)
        if opts.api:
            figures["api"] = api_section(settings, opts, advance)
        advance("plots and report")
        results["machine"] = machine(figures["podium"]["broker"])
        results["machine"]["load_average_at_start"] = load_at_start
        results["versions"] = versions(figures.get("temporal"), str(settings.broker))
        results["targets"] = targets(results)
        results["seconds"] = time.perf_counter() - started
        write_outputs(results, opts)
    return results


def run_api_only(
    settings: Settings, opts: PeerOptions, console: Console | None = None
) -> dict[str, Any]:
    """The api section alone (`podium bench --only api`): its figures go into the
    results.json already in ``opts.out_dir`` (a new one when there is none), and the
    report is rendered again from it, so the other sections keep their figures."""
    console = console or Console(stderr=True)
    with stage_progress(console, API_STAGES) as advance:
        section = api_section(settings, opts, advance)
    return write_api_only(section, opts)

"""I/O-bound scaling: T(n) and E(n) = T(n)/(n·T(1)) over repeated runs, and
podium's runs of the executor bench (podium_bench.executor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podium_bench.executor import run_executor_bench
from podium_bench.options import PeerOptions
from podium_bench.stats import efficiency, median
from podium_shared import Settings


def scaling_figure(per_n: dict[str, list[float]], opts: PeerOptions) -> dict[str, Any]:
    """Median T(n) over runs; E(n) per run (against that run's T(1)), then the median."""
    base = per_n[str(opts.replicas[0])]
    out = {}
    for n in opts.replicas:
        runs = per_n[str(n)]
        effs = [efficiency(t, n, b) for t, b in zip(runs, base, strict=True)]
        out[str(n)] = {
            "concurrency": opts.scaling_concurrency,
            "steps_s_runs": runs,
            "steps_s": median(runs),
            "ideal_steps_s": n * opts.scaling_concurrency / opts.sleep_s,
            "efficiency": median(effs),
        }
    return out


def podium_scaling(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    """podium_bench.executor's run, ``repeat`` times: its single-replica and scaling figures."""
    runs = []
    section = ""
    for r in range(opts.repeat):
        advance(f"podium executor scaling, run {r + 1}/{opts.repeat}")
        section, data = run_executor_bench(
            settings,
            sleep_s=opts.sleep_s,
            seconds=opts.scaling_seconds,
            single_concurrency=opts.single_concurrency,
            scaling_concurrency=opts.scaling_concurrency,
            replicas=opts.replicas,
        )
        runs.append(data)
    per_n = {str(n): [d["scaling"][str(n)]["steps_s"] for d in runs] for n in opts.replicas}
    single = [d["single"]["steps_s"] for d in runs]
    return {
        "runs": runs,
        "scaling": scaling_figure(per_n, opts),
        "single": {
            "concurrency": opts.single_concurrency,
            "steps_s": median(single),
            "ideal_steps_s": opts.single_concurrency / opts.sleep_s,
            "ratio_to_ideal": median(single) / (opts.single_concurrency / opts.sleep_s),
        },
        "last_section": section,
    }

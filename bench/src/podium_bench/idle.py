"""An idle stack's CPU: each process's share of a core while no task runs (issue 18:
≤ 0.05 of a core on Apache Kafka, ≤ 0.10 on the embedded broker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from podium_bench.processes import cpu_seconds, system_processes


def cores_used(
    before: dict[str, float], after: dict[str, float], elapsed_s: float
) -> dict[str, float]:
    """Each process's CPU-seconds over a window divided by the window: the fraction of
    one core it used. A process missing from either reading is left out."""
    if elapsed_s <= 0:
        raise ValueError("the window must be longer than zero")
    return {n: (after[n] - before[n]) / elapsed_s for n in before if n in after}


def idle_figure(cores: dict[str, float]) -> dict[str, Any]:
    """The figure reported: per process, the services' sum and the broker's apart."""
    services = sum(v for n, v in cores.items() if not n.startswith("broker"))
    broker = sum(v for n, v in cores.items() if n.startswith("broker"))
    return {
        "per_process": cores,
        "services": services,
        "broker": broker,
        "total": services + broker,
    }


def measure_idle(
    window_s: float,
    settle_s: float = 5.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The CPU of this process's podium children over ``window_s`` of idleness, after
    ``settle_s`` for start-up work (group joins, first fetches) to finish."""
    procs = system_processes("podium")
    sleep(settle_s)
    before, start = cpu_seconds(procs), clock()
    sleep(window_s)
    after, end = cpu_seconds(procs), clock()
    return idle_figure(cores_used(before, after, end - start))


# issue 18: an idle stack's share of one core, broker included, by broker kind.
IDLE_GOALS = {"kafka": 0.05, "tansu": 0.10}


def idle_line(idle: dict[str, Any]) -> str:
    """The report's sentence for the idle figure."""
    per = ", ".join(f"{n} {v:.3f}" for n, v in idle["per_process"].items())
    load = idle.get("load_average") or [float("nan")]
    return (
        f"Idle stack (no task submitted; CPU-seconds of each process over {idle['window_s']:g} s "
        f"after start-up, load average {load[0]:.1f} when read): {idle['total']:.3f} of a core in "
        f"all, the services {idle['services']:.3f} and the broker {idle['broker']:.3f} "
        f"({per}). Goal (issue 18): ≤ {IDLE_GOALS.get(idle['broker_kind'], float('nan')):.2f} "
        f"on {idle['broker_kind']}.\n"
    )

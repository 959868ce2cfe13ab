"""The whole-stack scaling section's arithmetic and its Markdown
(podium_bench.stack_scaling measures): no broker, no processes, so the report
renders from a results.json and the unit tests check every figure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from podium_bench.stats import median, median_of
from podium_shared.topics import TopicSpec


def too_few_partitions(specs: Iterable[TopicSpec], consumed: Iterable[str], n: int) -> list[str]:
    """The consumed topics with fewer than ``n`` partitions (a replica beyond the
    count would get none and sit idle), as "topic (partitions)"."""
    by_name = {s.name: s.partitions for s in specs}
    return [f"{t} ({by_name.get(t, 0)})" for t in consumed if by_name.get(t, 0) < n]


def cpu_ceiling(cores: int, cpu_s_per_1000: float) -> float:
    """Tasks/s at which ``cpu_s_per_1000`` CPU-seconds per 1,000 tasks fill ``cores``
    cores: no replica count takes a CPU-bound stack past it on this machine."""
    if cpu_s_per_1000 <= 0:
        raise ValueError("CPU per task must be positive")
    return cores * 1000 / cpu_s_per_1000


def curve(rounds: list[dict[str, dict[str, Any]]], cores: int) -> dict[str, Any]:
    """Per n, from rounds of {n: one throughput run}: median tasks/s and CPU per
    1,000 tasks (the stack's, by process, and the load generator's); S(n) and E(n)
    per round against that round's smallest n (1 in the bench), then their median;
    the cores busy (CPU-s per second, stack and load generator together) and the CPU
    ceiling on ``cores``."""
    if not rounds:
        raise ValueError("a curve of no rounds")
    base = min(rounds[0], key=int)
    out: dict[str, Any] = {}
    for key in sorted(rounds[0], key=int):
        n = int(key)
        runs = [r[key] for r in rounds]
        speedups = [r[key]["tasks_per_s"] / r[base]["tasks_per_s"] for r in rounds]
        total = [run["cpu_s_per_1000"] + run["client_cpu_s_per_1000"] for run in runs]
        out[key] = {
            "routers": n,
            "executors": n,
            "tasks_per_s_runs": [run["tasks_per_s"] for run in runs],
            "tasks_per_s": median([run["tasks_per_s"] for run in runs]),
            "speedup": median(speedups),
            "efficiency": median([s * int(base) / n for s in speedups]),
            "cpu_s_per_1000": median([run["cpu_s_per_1000"] for run in runs]),
            "client_cpu_s_per_1000": median([run["client_cpu_s_per_1000"] for run in runs]),
            "cpu_by_role": median_of([run["cpu_s_per_1000_by_process"] for run in runs]),
            "cores_busy": median(
                [t * run["tasks_per_s"] / 1000 for t, run in zip(total, runs, strict=True)]
            ),
            "cpu_ceiling_tasks_per_s": cpu_ceiling(cores, median(total)),
            "processes": runs[0]["processes"],
        }
    return out


def markdown(s: dict[str, Any]) -> str:
    """The report's section (its heading included)."""
    pg = s["database"] == "PostgreSQL"
    shared = " (one per role, shared by its replicas; each process its own PODIUM_HOME)"
    shared = shared if pg else ""
    backends = " and the PostgreSQL backends of the stack's databases" if pg else ""
    partitions = ", ".join(f"`{t}` {p}" for t, p in s["partitions"].items())
    load = s["load_average"]
    lines = [
        "## 4b. Whole-stack scaling: routers and executors\n",
        f"`hello` (one `echo` step) with {s['in_flight']} in flight for {s['seconds']:g} s per "
        "run (`podium_bench.drivers`' throughput run) through n routers AND n executors, on "
        f"{s['broker_kind']}, every role's database on {s['database']}{shared}, each "
        f"executor at concurrency {s['in_flight']} (so that only n changes). Partitions: "
        f"{partitions}. Each round runs every n on a fresh stack; S(n) = T(n)/T(1) and "
        "E(n) = S(n)/n against the same round's n = 1, then the median of the rounds. CPU: "
        f"the services, the broker{backends}; the load generator's beside it. This machine "
        f"has **{s['cores']} cores**: the CPU ceiling is the rate at which the stack's and "
        "the load generator's CPU per task would fill them all, which no replica count can "
        "pass. Load average (1 min) "
        f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end.\n",
        "| n routers + n executors | tasks/s T(n) | S(n) | E(n) | CPU-s per 1,000 tasks "
        "(stack) | by process | load generator | cores busy | CPU ceiling, tasks/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in s["curve"].items():
        by = ", ".join(f"{k} {v:.2f}" for k, v in sorted(c["cpu_by_role"].items()))
        lines.append(
            f"| {key} | {c['tasks_per_s']:.0f} | {c['speedup']:.2f} | {c['efficiency']:.2f} | "
            f"{c['cpu_s_per_1000']:.2f} | {by} | {c['client_cpu_s_per_1000']:.2f} | "
            f"{c['cores_busy']:.2f} of {s['cores']} | {c['cpu_ceiling_tasks_per_s']:.0f} |"
        )
    for key, why in s["not_measured"].items():
        lines.append(f"| {key} | not measured: {why} | | | | | | | |")
    return "\n".join(lines) + "\n"


def cpu_groups(by_role: dict[str, float]) -> dict[str, float]:
    """CPU per 1,000 tasks for the plot's bars: the PostgreSQL backends of every
    role's database as one "postgresql", the others as they are."""
    out: dict[str, float] = {}
    for name, value in by_role.items():
        key = "postgresql" if name.startswith("postgresql") else name
        out[key] = out.get(key, 0.0) + value
    return out

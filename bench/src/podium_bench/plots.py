"""The report's PNG plots: latency CDFs, scaling, throughput and CPU per task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podium_bench.stack_figures import cpu_groups
from podium_bench.stats import cdf


def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the PNGs into out_dir; their file names."""
    # Imported here: matplotlib takes a second to import, and `render` needs none of it.
    import matplotlib

    matplotlib.use("Agg")  # no display: before pyplot is imported
    import matplotlib.pyplot as plt

    f = results["figures"]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, workflow in zip(axes, ("hello", "chain3"), strict=True):
        for system, style in (
            ("podium", "-"),
            ("temporal", "--"),
            ("restate", "-."),
            ("dbos", ":"),
        ):
            lat = f.get(system, {}).get("latency", {}).get(workflow)
            if not lat or not lat.get("samples"):
                continue
            xs, ys = cdf(lat["samples"])
            ax.plot(xs, ys, style, label=f"{system} (p50 {lat['median']['p50']:.1f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("fraction of tasks")
        ax.set_title(f"{workflow}: open-loop {results['options']['rate_per_s']:.0f} tasks/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = out_dir / "latency-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sources = (
        ("podium", f["podium"]["scaling"]["scaling"]),
        ("temporal", f.get("temporal", {}).get("scaling")),
    )
    ideal_done = False
    for system, sc in sources:
        if not sc:
            continue
        ns = sorted(int(n) for n in sc)
        a1.plot(ns, [sc[str(n)]["steps_s"] for n in ns], "o-", label=system)
        a2.plot(ns, [sc[str(n)]["efficiency"] for n in ns], "o-", label=system)
        if not ideal_done:
            a1.plot(ns, [sc[str(n)]["ideal_steps_s"] for n in ns], ":", color="grey", label="ideal")
            ideal_done = True
    a1.set_xlabel("replicas / worker processes")
    a1.set_ylabel("sleep steps/s, T(n)")
    a1.set_title("I/O-bound scaling (100 ms sleep, fixed concurrency each)")
    a2.axhline(0.9, color="grey", linestyle=":", label="0.90")
    a2.set_ylim(0, 1.1)
    a2.set_xlabel("replicas / worker processes")
    a2.set_ylabel("E(n) = T(n) / (n · T(1))")
    a2.set_title("scaling efficiency")
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out_dir / "scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    if f.get("stack_scaling", {}).get("curve"):
        written.append(stack_scaling_plot(plt, f["stack_scaling"], out_dir))

    tp = [
        (s, f[s]["throughput"]["median"])
        for s in ("podium", "temporal", "restate", "dbos")
        if "throughput" in f.get(s, {})
    ]
    if tp:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
        names = [s for s, _ in tp]
        a1.bar(names, [m["tasks_per_s"] for _, m in tp], color=["C0", "C1", "C2", "C3"][: len(tp)])
        a1.set_ylabel("tasks/s (one-step)")
        a1.set_title("sustained throughput")
        a2.bar(
            names, [m["cpu_s_per_1000"] for _, m in tp], color=["C0", "C1", "C2", "C3"][: len(tp)]
        )
        a2.set_ylabel("CPU-seconds per 1,000 tasks")
        a2.set_title("cost")
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def stack_scaling_plot(plt: Any, s: dict[str, Any], out_dir: Path) -> str:
    """podium_bench.stack_scaling's curve: T(n) beside linear and the CPU ceiling on
    this machine's cores; CPU per 1,000 tasks by process, stacked, per n."""
    c = s["curve"]
    ns = sorted(int(n) for n in c)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.plot(ns, [c[str(n)]["tasks_per_s"] for n in ns], "o-", label="podium T(n)")
    t1 = c[str(ns[0])]["tasks_per_s"] / ns[0]
    a1.plot(ns, [n * t1 for n in ns], ":", color="grey", label="linear n·T(1)")
    a1.plot(
        ns,
        [c[str(n)]["cpu_ceiling_tasks_per_s"] for n in ns],
        "--",
        color="C3",
        label=f"CPU ceiling on {s['cores']} cores",
    )
    a1.set_xticks(ns)
    a1.set_xlabel("n routers + n executors")
    a1.set_ylabel("hello tasks/s")
    a1.set_title(f"whole stack, {s['in_flight']} in flight, {s['broker_kind']}, {s['database']}")
    a1.set_ylim(bottom=0)
    a1.grid(True, alpha=0.3)
    a1.legend()
    groups = [cpu_groups(c[str(n)]["cpu_by_role"]) for n in ns]
    names = sorted({k for g in groups for k in g})
    bottom = [0.0] * len(ns)
    labels = [str(n) for n in ns]
    for name in names:
        values = [g.get(name, 0.0) for g in groups]
        a2.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    client = [c[str(n)]["client_cpu_s_per_1000"] for n in ns]
    a2.bar(labels, client, bottom=bottom, label="load generator", color="lightgrey")
    a2.set_xlabel("n routers + n executors")
    a2.set_ylabel("CPU-seconds per 1,000 tasks")
    a2.set_title("cost per task")
    a2.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / "stack-scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name

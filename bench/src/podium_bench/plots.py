"""The report's PNG plots: latency CDFs, scaling, throughput and CPU per task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

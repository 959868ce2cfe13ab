"""The report's section on the durable-execution peers (issue 18): podium, Temporal,
Restate and DBOS side by side from the same run, with what each persists per step;
a peer that did not run says why."""

from __future__ import annotations

from typing import Any

from podium_bench.peers import PERSISTS

SYSTEMS = (("podium", "podium"), ("temporal", "Temporal"), ("restate", "Restate"), ("dbos", "DBOS"))


def _ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def _p50_p99(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "— | —"
    m = figure["median"]
    return f"{_ms(m['p50'])} | {_ms(m['p99'])}"


def why_absent(side: dict[str, Any]) -> str | None:
    """Why a system has no figures ("not installed: ...", "skipped: ..."), or None."""
    if "unavailable" in side:
        return f"could not run: {side['unavailable']}"
    if "skipped" in side:
        return f"skipped: {side['skipped']}"
    if "latency" not in side:
        return "not measured"
    return None


def peers_section(figures: dict[str, Any], options: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    add = lines.append
    add("## 7. Durable-execution peers: Temporal, Restate, DBOS (issue 18)\n")
    add(
        "The same shapes for every system, in this run, on this machine: `hello` (one step) "
        "and `chain3` (three steps in a row, each reading the previous output) open-loop at "
        f"{options['rate_per_s']:.0f}/s (section 2's method); `hello` with "
        f"{options['in_flight']} in flight (section 3's method: CPU and peak RSS of every "
        "process of the system under test, not the load generator); and `hello` closed-loop "
        f"with one task in flight for {options['latency_s']:g} s (the next task starts when "
        "the last ends: the latency of an idle system). Restate: its server from the npm "
        "package `@restatedev/restate-server` (pinned, `bench/restate/package-lock.json`) "
        "with its defaults, and a service written with the `restate-sdk` Python package on "
        "hypercorn, one `ctx.run` per step, called through the ingress over HTTP. DBOS: the "
        "`dbos` package in an application process of its own behind a small HTTP endpoint "
        "(hypercorn), one `@DBOS.step` per step, on a PostgreSQL cluster the bench starts "
        "with the server's default durability; its CPU and memory include every PostgreSQL "
        "process (memory: the peak of their summed PSS, so the shared buffers they all map "
        "count once; a lone process's is its RSS). Each "
        "figure is the median of the runs. `podium bench --peers restate,dbos` chooses the "
        "peers (all by default); one that cannot be installed or started is listed under "
        "the table with the reason.\n"
    )
    versions = []
    if figures.get("restate", {}).get("version"):
        r = figures["restate"]
        versions.append(f"Restate: {r['version']}, restate-sdk {r.get('sdk', '?')}")
    if figures.get("dbos", {}).get("version"):
        d = figures["dbos"]
        versions.append(f"DBOS: dbos {d['version']}, {d.get('postgres', 'PostgreSQL ?')}")
    if versions:
        add("Versions: " + "; ".join(versions) + ".\n")
    loads = [
        f"{name} {la['start'][0]:.1f} → {la['end'][0]:.1f}"
        for key, name in SYSTEMS
        if (la := figures.get(key, {}).get("load_average"))
    ]
    if loads:
        add(
            "Load average (1 min) at the start and end of each peer's runs: "
            + ", ".join(loads)
            + " (about 1 to 2 is the system under test and the load generator).\n"
        )
    add(
        "| system | `hello` p50 | `hello` p99 | `chain3` p50 | `chain3` p99 | one in flight p50 "
        "| one in flight p99 | tasks/s | CPU-s per 1,000 tasks |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    absent: list[str] = []
    present: list[tuple[str, dict[str, Any]]] = []
    for key, name in SYSTEMS:
        side = figures.get(key, {})
        why = why_absent(side)
        if why:
            absent.append(f"- {name}: {why}.")
            continue
        present.append((name, side))
        lat = side["latency"]
        th = side.get("throughput", {}).get("median")
        tput = f"{th['tasks_per_s']:.0f} | {th['cpu_s_per_1000']:.2f}" if th else "— | —"
        add(
            f"| {name} | {_p50_p99(lat.get('hello'))} | {_p50_p99(lat.get('chain3'))} "
            f"| {_p50_p99(side.get('closed_one'))} | {tput} |"
        )
    add("")
    if absent:
        add("Not in the table:\n")
        lines.extend(absent)
        add("")
    add("| system | CPU-s per 1,000 by process | peak RSS by process |\n|---|---|---|")
    for name, side in present:
        th = side.get("throughput")
        if not th:
            continue
        by = ", ".join(f"{k} {x:.2f}" for k, x in sorted(th["cpu_by_process"].items()))
        rss = ", ".join(f"{k} {x:.0f} MiB" for k, x in sorted(th["peak_rss_mib"].items()))
        add(f"| {name} | {by} | {rss} |")
    add("\nWhat each system persists per step, as run here:\n")
    for key, name in SYSTEMS:
        add(f"- **{name}**: {PERSISTS[key]}.")
    add("")
    return lines

"""The api section's decisions and report, pure (no I/O): whether the projection's
lag stayed bounded, the targets of issue 17, and the section's Markdown, rendered
from its figures (so ``python -m podium_bench render`` rewrites it too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Issue 17's targets (ms, p99): the runs list at 100,000 runs, a run page of 50 steps.
LIST_P99_MS = 50.0
RUN_PAGE_P99_MS = 100.0

# The cases of the read run: (key, what it is, the target it is held to or None).
LIST, RUN_PAGE = "list", "run page"


@dataclass(frozen=True)
class LagVerdict:
    bounded: bool
    why: str


def lag_verdict(
    samples: Sequence[tuple[float, int]],
    load_s: float,
    drained_s: float | None,
    events_per_s: float,
    *,
    growth: float = 1.5,
) -> LagVerdict:
    """Whether the projection kept up: ``samples`` are (seconds since the load
    began, consumer lag in events), during the load and after it; ``drained_s`` is
    how long after the load the lag reached 0 (None: it never did).

    Bounded means the lag did not grow through the load (its peak in the second
    half is at most ``growth`` times its peak in the first half: a projection slower
    than the stack has a lag that grows in proportion to time, so twice as high at
    the end as at the middle) and that it drained once the load stopped. A lag under
    one second of events is noise of the sampling and commit cadence, never growth."""
    if drained_s is None:
        return LagVerdict(False, "the lag never drained to 0 after the load")
    during = [(t, lag) for t, lag in samples if t <= load_s]
    if not during:
        return LagVerdict(False, "no lag sample during the load")
    half = load_s / 2
    first = max((lag for t, lag in during if t <= half), default=0)
    second = max((lag for t, lag in during if t > half), default=0)
    floor = max(events_per_s, 1.0)
    if second <= floor:
        return LagVerdict(
            True, f"peak {second} events in the second half, under one second of events"
        )
    if second <= growth * max(first, floor):
        return LagVerdict(
            True,
            f"peak {second} events in the second half vs {first} in the first; "
            f"drained {drained_s:.1f} s after the load",
        )
    return LagVerdict(
        False, f"the lag grew: peak {first} events in the first half, {second} in the second"
    )


def _ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def targets(api: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's speed targets against this run's figures, one row per database and
    case held to a target, and one per throughput run with the projection (its lag)."""
    out: list[dict[str, Any]] = []
    for db, read in api.get("read", {}).items():
        if "cases" not in read:
            continue
        for case in read["cases"]:
            goal = {LIST: LIST_P99_MS, RUN_PAGE: RUN_PAGE_P99_MS}.get(case.get("kind", ""))
            if goal is None:
                continue
            p99 = case["ms"]["p99"]
            out.append(
                {
                    "name": f"{case['name']} ({db})",
                    "goal": f"p99 ≤ {goal:.0f} ms",
                    "measured": f"{_ms(p99)} ms",
                    "met": p99 <= goal,
                }
            )
    for run in api.get("projection", {}).get("runs", []):
        if run.get("database") is None or "lag" not in run:
            continue
        out.append(
            {
                "name": f"projection keeps up at full throughput ({run['database']})",
                "goal": "lag bounded",
                "measured": run["lag"]["why"],
                "met": run["lag"]["bounded"],
            }
        )
    return out


def markdown(api: dict[str, Any]) -> str:
    """The section (``## The api service ...`` and what follows)."""
    o = api["options"]
    lines: list[str] = []
    add = lines.append
    add("## The api service: reads over HTTP and the projection (issue 17)\n")
    load = api.get("load_average")
    if load:
        add(
            f"Measured by `podium bench --only api` (or as part of the whole run) on "
            f"{api.get('date', '?')}; load average (1/5/15 min) at the start "
            f"{load['start'][0]:.2f} / {load['start'][1]:.2f} / {load['start'][2]:.2f}, at the end "
            f"{load['end'][0]:.2f} / {load['end'][1]:.2f} / {load['end'][2]:.2f}.\n"
        )
    add("| target | goal | measured | |\n|---|---|---|---|")
    for t in api.get("targets", []):
        mark = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        add(f"| {t['name']} | {t['goal']} | {t['measured']} | {mark} |")
    add("")
    add("### Reads: the runs list and the run page\n")
    add(
        f"{o['runs']:,} runs (20 tenants, 5 workflows, 1,000 subjects; two steps each, "
        f"{o['big_runs']} of them with {o['steps']} steps) written straight into the api's "
        "database (on PostgreSQL then `ANALYZE`d, as autovacuum would within a minute), "
        "then the real api process (`python -m podium_api`, uvicorn, auth on "
        "every request) serves them on loopback to a load generator in a process of its "
        f"own (`podium_bench.api_load`): one keep-alive connection, {o['requests']:,} "
        f"requests per case after {o['warmup']} warm-up rounds, the cases taken in turn so "
        "the machine's noise falls on each alike. Baseline: `GET /healthz` (the same "
        "HTTP round trip through the same server, no token, no database) in the same "
        "rounds. Pages of 50.\n"
    )
    dbs = [db for db, r in api.get("read", {}).items() if "cases" in r]
    skipped = {db: r["skipped"] for db, r in api.get("read", {}).items() if "skipped" in r}
    if dbs:
        head = " | ".join(f"{db} p50 / p99 | ÷ healthz p99" for db in dbs)
        add(f"| case | {head} |")
        add("|---|" + "---|---|" * len(dbs))
        names = [c["name"] for c in api["read"][dbs[0]]["cases"]]
        for name in names:
            cols = []
            for db in dbs:
                read = api["read"][db]
                case = next((c for c in read["cases"] if c["name"] == name), None)
                if case is None:
                    cols.append("— | —")
                    continue
                base = read["baseline_ms"]["p99"]
                cols.append(
                    f"{_ms(case['ms']['p50'])} / {_ms(case['ms']['p99'])} ms | "
                    f"{case['ms']['p99'] / base:.1f}×"
                )
            add(f"| {name} | {' | '.join(cols)} |")
        base_cols = " | ".join(
            f"{_ms(api['read'][db]['baseline_ms']['p50'])} / "
            f"{_ms(api['read'][db]['baseline_ms']['p99'])} ms | 1.0×"
            for db in dbs
        )
        add(f"| *baseline: `GET /healthz`* | {base_cols} |")
        cpu = ", ".join(
            f"{db} {api['read'][db]['api_cpu_ms_per_request']:.2f} ms"
            for db in dbs
            if "api_cpu_ms_per_request" in api["read"][db]
        )
        if cpu:
            add(f"\nThe api process's CPU per request, over every case: {cpu}.")
        seeded = ", ".join(f"{db} {api['read'][db]['seed_s']:.0f} s" for db in dbs)
        add(f"Writing the runs took {seeded}.\n")
    for db, why in skipped.items():
        add(f"{db}: not measured ({why}).\n")
    proj = api.get("projection", {})
    if proj.get("runs"):
        add("### The projection at the stack's full throughput\n")
        add(
            f"The whole stack (router, executor, memory, recovery, Tansu or Kafka) runs "
            f"`hello` tasks closed-loop, {o['in_flight']} in flight for {o['throughput_s']:g} s, "
            "once without the api (the baseline) and once with it on each database. The "
            "api's consumer lag (its group's committed offsets against the end offsets of "
            "the four topics it reads) is sampled every "
            f"{o['lag_every_s']:g} s during the load and after it until it reaches 0. "
            "Events: the records the four topics gained in the window. The api's CPU "
            "counts until its lag drained, so it pays for every event of the window.\n"
        )
        add(
            "| run | tasks/s | ÷ without the api | api CPU-s per 1,000 events | api ÷ rest of "
            "the stack, CPU per task | lag peak / at load's end (events) | drained after | "
            "bounded |"
        )
        add("|---|---|---|---|---|---|---|---|")
        base = next((r for r in proj["runs"] if r.get("database") is None), None)
        for r in proj["runs"]:
            label = "without the api" if r.get("database") is None else f"api on {r['database']}"
            vs = f"{r['tasks_per_s'] / base['tasks_per_s']:.2f}" if base else "—"
            if r.get("database") is None:
                add(f"| {label} | {r['tasks_per_s']:.0f} | 1.00 | — | — | — | — | — |")
                continue
            lag = r["lag"]
            drained = f"{lag['drained_s']:.1f} s" if lag["drained_s"] is not None else "never"
            add(
                f"| {label} | {r['tasks_per_s']:.0f} | {vs} | "
                f"{r['api_cpu_s_per_1000_events']:.2f} ({r['events']:,} events, "
                f"{r['events_per_task']:.1f} per task) | {r['api_share_of_stack_cpu']:.2f} | "
                f"{lag['peak']:,} / {lag['at_load_end']:,} | {drained} | "
                f"{'yes' if lag['bounded'] else '**no**'} |"
            )
        add("")
        for r in proj["runs"]:
            if r.get("database") and r["lag"].get("series"):
                series = ", ".join(f"{lag:,}" for _, lag in r["lag"]["series"])
                add(
                    f"Lag samples, api on {r['database']} (events, every {o['lag_every_s']:g} s): {series}.\n"
                )
    if api.get("notes"):
        add(api["notes"].strip() + "\n")
    return "\n".join(lines)

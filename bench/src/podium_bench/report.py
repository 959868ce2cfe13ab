"""The outputs of a run: results.json (percentiles, not samples), the plots and the
Markdown report; `render` rewrites the report from a results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from podium_bench import api_figures, latency_stages, stack_figures
from podium_bench.baselines import hops
from podium_bench.idle import idle_line
from podium_bench.options import PeerOptions
from podium_bench.peers_report import peers_section
from podium_bench.plots import plots
from podium_bench.stats import ratio


def write_outputs(results: dict[str, Any], opts: PeerOptions) -> None:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(results, opts.out_dir)
    record = strip_samples(results)
    (opts.out_dir / "results.json").write_text(json.dumps(jsonable(record), indent=2) + "\n")
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        limits = opts.out_dir / "limits.md"
        opts.output.write_text(
            markdown(record, limits.read_text() if limits.exists() else None, opts)
        )


def write_api_only(section: dict[str, Any], opts: PeerOptions) -> dict[str, Any]:
    """Put the api section's figures into ``opts.out_dir``/results.json (beside the
    other sections' figures of an earlier run, kept as they are) and render the
    report again from it."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    path = opts.out_dir / "results.json"
    record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"figures": {}}
    record.setdefault("figures", {})["api"] = jsonable(section)
    path.write_text(json.dumps(record, indent=2) + "\n")
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        limits = opts.out_dir / "limits.md"
        opts.output.write_text(
            markdown(record, limits.read_text() if limits.exists() else None, opts)
        )
    return record


def strip_samples(value: Any) -> Any:
    """The record keeps percentiles, not every latency sample."""
    if isinstance(value, dict):
        return {
            k: strip_samples(v)
            for k, v in value.items()
            if not (k == "samples" and isinstance(v, list))
        }
    if isinstance(value, list):
        return [strip_samples(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def markdown(r: dict[str, Any], limits: str | None, opts: PeerOptions) -> str:
    if "podium" not in r["figures"]:  # the api section alone, before any whole run
        return "# Benchmarks\n\n" + api_figures.markdown(r["figures"]["api"]).strip() + "\n"
    f, m, v = r["figures"], r["machine"], r["versions"]
    p, t = f["podium"], f.get("temporal", {})
    rel = opts.out_dir.name  # plots and results.json, beside the report
    raw = p["raw_hop_ms"]["median"]
    o = r["options"]
    has_t = "latency" in t
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: podium beside Temporal, Restate and DBOS\n")
    load0, load1 = (
        f"{m[k][0]:.1f}" if m.get(k) else "?"
        for k in ("load_average_at_start", "load_average_at_end")
    )
    add(
        f"Measured by `make bench` (`podium bench`) on {m['date']}: {m['cpus']} cores ({m['cpu']}), "
        f"{m.get('memory_gib', '?')} GiB, {m['platform']}. Python {v['python']}, podium {v['podium']}, "
        f"broker {v['broker']} ({m['broker']}), temporalio {v['temporalio']}, "
        f"{v['temporal server']}. Load average (1 min) at start {load0}, at end {load1}: "
        "(a load near 1 is the benchmark itself; higher means other work shared the machine). "
        "Absolute figures are noisy on these machines; both systems ran in the same run on the same machine, and every ratio is against "
        f"a baseline measured in that run. Each figure is the median of {o['repeat']} run(s); the "
        f"raw runs are in [{rel}/results.json]({rel}/results.json). The whole run took "
        f"{r['seconds'] / 60:.1f} min.\n"
    )
    add("## Targets (issue 8, with issues 2 and 4)\n")
    add("| target | goal | measured | |\n|---|---|---|---|")
    for x in r["targets"]:
        mark = {True: "met", False: "**not met**", None: "not measured"}[x["met"]]
        add(f"| {x['name']} | {x['goal']} | {x['measured']} | {mark} |")
    add("")
    add("## 1. Baselines of the same run\n")
    add("| baseline | p50 | p99 | p99.9 |\n|---|---|---|---|")
    add(
        f"| raw produce→consume hop, same broker | {_ms(raw['p50'])} | {_ms(raw['p99'])} | {_ms(raw['p99.9'])} |"
    )
    sq = p["sqlite_commit_ms"]["median"]
    add(
        f"| one SQLite commit (one-row INSERT, WAL, the services' engine) | {_ms(sq['p50'])} | {_ms(sq['p99'])} | {_ms(sq['p99.9'])} |"
    )
    add(
        f"\nRaw broker throughput, one producer → one consumer: {p['raw_msgs_per_s']:.0f} msgs/s.\n"
    )
    if "idle" in p:
        add(idle_line(p["idle"]))

    add("## 2. Latency, open-loop\n")
    add(
        f"Tasks arrive at a fixed {o['rate_per_s']:.0f}/s for {o['latency_s']:g} s per run "
        f"(each submitted on schedule whatever earlier tasks do; latency counts from the "
        f"scheduled time), after {o['warmup']} warm-up tasks. podium: `hello` (one `echo` step) "
        "and `chain3` (three `echo` steps in a row) through the whole stack — router, executor, "
        "outbox, the broker. Temporal: a workflow running one `echo` activity, and one running "
        "three in a row, each reading the previous output; one worker process (SDK defaults), "
        "the dev server in memory. Hops: broker hops a podium task makes (2 + 2 per step).\n"
    )
    add(
        "| workflow | system | p50 | p99 | p99.9 | p50 ÷ (hops × raw hop p50) | podium ÷ Temporal (p50 / p99) |"
    )
    add("|---|---|---|---|---|---|---|")
    for wf, depth in (("hello", 1), ("chain3", 3)):
        pm = p["latency"][wf]["median"]
        tm = t["latency"][wf]["median"] if has_t else None
        vs_temporal = (
            f"{ratio(pm['p50'], tm['p50']):.3f} / {ratio(pm['p99'], tm['p99']):.3f}" if tm else "—"
        )
        h = hops(depth)
        add(
            f"| `{wf}` ({depth} step{'s' if depth > 1 else ''}, {h} hops) | podium | {_ms(pm['p50'])} | "
            f"{_ms(pm['p99'])} | {_ms(pm['p99.9'])} | {ratio(pm['p50'], h * raw['p50']):.1f}× | {vs_temporal} |"
        )
        if tm:
            add(f"| | Temporal | {_ms(tm['p50'])} | {_ms(tm['p99'])} | {_ms(tm['p99.9'])} | — | |")
    if "latency-cdf.png" in r.get("plots", []):
        add(f"\n![latency CDFs, podium and Temporal]({rel}/latency-cdf.png)\n")
    if not has_t:
        add(f"\nTemporal: {t.get('skipped', 'not run')}.\n")

    if "stages" in p:
        add(latency_stages.markdown(p["stages"], raw["p50"]))
    add("## 3. Throughput\n")
    add(
        f"`hello` tasks with {o['in_flight']} in flight for {o['throughput_s']:g} s per run (a "
        "new task as soon as one finishes), the same for both. CPU counts every process of the "
        "system under test (podium: router, executor, memory, recovery, broker; Temporal: dev "
        "server, worker), not the load generator.\n"
    )
    add(
        "| system | tasks/s | CPU-s per 1,000 tasks | CPU-s per 1,000 by process | peak RSS by process |"
    )
    add("|---|---|---|---|---|")
    pg = p.get("postgres", {})
    for name, side in (("podium", p), ("podium on PostgreSQL", pg), ("Temporal", t)):
        if "throughput" not in side:
            continue
        th = side["throughput"]
        by = ", ".join(f"{k} {x:.2f}" for k, x in sorted(th["cpu_by_process"].items()))
        rss = ", ".join(f"{k} {x:.0f} MiB" for k, x in sorted(th["peak_rss_mib"].items()))
        add(
            f"| {name} | {th['median']['tasks_per_s']:.0f} | {th['median']['cpu_s_per_1000']:.2f} | {by} | {rss} |"
        )
    if has_t:
        add(
            f"\npodium ÷ Temporal: {ratio(p['throughput']['median']['tasks_per_s'], t['throughput']['median']['tasks_per_s']):.2f}× "
            f"the tasks/s at {ratio(p['throughput']['median']['cpu_s_per_1000'], t['throughput']['median']['cpu_s_per_1000']):.2f}× "
            "the CPU per task. Baseline: the raw broker moves "
            f"{p['raw_msgs_per_s']:.0f} msgs/s; a one-step task is {hops(1)} messages plus outbox commits.\n"
        )
    if "postgres" in p:  # results.json of runs before issue 18 have no such figure
        add(postgres_line(p))
    if "throughput.png" in r.get("plots", []):
        add(f"![throughput and CPU per task]({rel}/throughput.png)\n")

    add("## 4. I/O-bound scaling\n")
    sc = p["scaling"]["scaling"]
    tsc = t.get("scaling", {})
    add(
        f"`sleep` {o['sleep_s'] * 1000:.0f} ms steps, {o['scaling_seconds']:g} s of ideal work per run. "
        f"podium: n executor replicas at concurrency {o['scaling_concurrency']} each, steps produced "
        "straight onto the pool's topic (no router: `podium_bench.executor`). Temporal: n worker "
        f"processes at `max_concurrent_activities={o['scaling_concurrency']}` each, one workflow "
        "per sleep activity (Temporal has no way to run an activity without a workflow, so its "
        "path includes a workflow task). E(n) = T(n)/(n·T(1)), each run against its own T(1). "
        "Baseline: the ideal n·concurrency/sleep.\n"
    )
    add("| n | ideal steps/s | podium T(n) | podium E(n) | Temporal T(n) | Temporal E(n) |")
    add("|---|---|---|---|---|---|")
    for n in o["replicas"]:
        s = sc[str(n)]
        ts = tsc.get(str(n))
        tcol = f"{ts['steps_s']:.1f} | {ts['efficiency']:.3f}" if ts else "— | —"
        add(
            f"| {n} | {s['ideal_steps_s']:.0f} | {s['steps_s']:.1f} | {s['efficiency']:.3f} | {tcol} |"
        )
    single = p["scaling"]["single"]
    add(
        f"\nOne podium replica at concurrency {single['concurrency']}: {single['steps_s']:.1f} steps/s, "
        f"{single['ratio_to_ideal']:.3f} of the ideal {single['ideal_steps_s']:.0f}.\n"
    )
    if "scaling.png" in r.get("plots", []):
        add(f"![scaling, podium and Temporal]({rel}/scaling.png)\n")
    if "stack_scaling" in f:
        add(stack_figures.markdown(f["stack_scaling"]))
        if "stack-scaling.png" in r.get("plots", []):
            add(f"![whole-stack scaling]({rel}/stack-scaling.png)\n")

    add("## 5. Recovery: kill -9 one of two executors\n")
    rec = f["recovery"]
    rm = rec["median"]
    add(
        f"{o['recovery_tasks']} one-step `effect.record` tasks (each appends one line per "
        f"idempotency key to a file, then holds the step {rec['hold_s']:.1f} s), two executors; "
        "once half the effects are written, one executor gets SIGKILL. Recovery time: from the "
        "kill until the last task in flight at the kill has completed (on the survivor, after the "
        "group evicts the dead member and rebalances; it includes one re-run of the step). "
        f"Baseline: the consumer session timeout, {rec['session_timeout_s']:.0f} s "
        "(`podium_shared.kafka.make_consumer`, the executors' consumer too).\n"
    )
    add("| figure | value |\n|---|---|")
    add(f"| tasks in flight at the kill | {rm['in_flight_at_kill']:.0f} |")
    add(f"| recovery time | {rm['recovered_s']:.2f} s |")
    add(f"| ÷ session timeout | {rm['ratio_to_session_timeout']:.2f}× |")
    if "broker_failover_s" in rm:
        add(
            "| the broker's own failover: two bare consumers, one killed -9, same session "
            f"timeout and heartbeat (`podium_bench.failover`) | {rm['broker_failover_s']:.2f} s |"
        )
        add(f"| recovery ÷ the broker's own failover | {rm['ratio_to_broker_failover']:.2f}× |")
    add(f"| tasks lost (all runs) | {rec['lost_total']} |")
    add(f"| effects doubled (all runs) | {rec['doubled_total']} |")
    add("")

    add("## 6. Tracing tax\n")
    tr = f["tracing"]
    if tr.get("measured"):
        add(
            f"Throughput of `hello` with `PODIUM_TRACING=off`: {tr['tasks_per_s']['off']:.0f} tasks/s; "
            f"with `local`: {tr['tasks_per_s']['local']:.0f} tasks/s; on ÷ off = {tr['on_over_off']:.3f}.\n"
        )
    else:
        add(f"{tr['reason']}.\n")

    lines.extend(peers_section(f, o))

    prof = p.get("profile")
    add("## What limits podium\n")
    if limits:
        add(limits.strip() + "\n")
    if prof and prof.get("services"):
        add(
            f"py-spy sampled every podium service at 100 Hz during an extra throughput run "
            f"({prof['tasks_per_s']:.0f} tasks/s under the profiler; not counted above). CPU share: "
            "the fraction of one core the process used; then where its samples fall (leaf frame), "
            "and the podium functions most often on its stack.\n"
        )
        add("| service | CPU share | self time by library | podium frames on the stack |")
        add("|---|---|---|---|")
        for name, s in sorted(prof["services"].items()):
            if "error" in s:
                add(f"| {name} | — | {s['error']} | |")
                continue
            cats = ", ".join(f"{k} {x:.0%}" for k, x in list(s["self_by_category"].items())[:5])
            frames = ", ".join(
                f"`{fr.split(' (')[0]}` {x:.0%}" for fr, x in s["top_podium_frames"][:4]
            )
            add(f"| {name} | {s['cpu_share']:.2f} | {cats} | {frames} |")
        add("\nRaw stacks: `docs/bench/profile-*.txt` (py-spy collapsed format).\n")

    add("## Memory store\n")
    add(f["memory"]["markdown"].split("\n", 1)[1].strip() + "\n")
    add("## Executor (issue 4)\n")
    add(
        f"The last of the {o['repeat']} executor runs as `podium_bench.executor` reports it; the "
        "medians over all runs are in section 4.\n"
    )
    add(p["scaling"]["last_section"].split("\n", 1)[1].strip() + "\n")
    add("## Recovery service\n")
    section = f["recovery_service"]["markdown"].strip()
    if section.startswith("## "):  # the section's own heading: keep it as the first line of text
        heading, _, section = section.partition("\n")
        add(f"*{heading.removeprefix('## ').strip()}*\n")
    add(section.strip() + "\n")
    if "api" in f:
        add(api_figures.markdown(f["api"]).strip() + "\n")
    return "\n".join(lines)


def postgres_line(p: dict[str, Any]) -> str:
    """The stack on PostgreSQL beside the SQLite stack of the same run."""
    pg = p.get("postgres", {})
    if "throughput" not in pg:
        return f"podium on PostgreSQL: {pg.get('skipped', 'not run')}.\n"
    sq_t, pg_t = (x["throughput"]["median"]["tasks_per_s"] for x in (p, pg))
    sq_l, pg_l = (x["latency"]["hello"]["median"] for x in (p, pg))
    return (
        f"podium on PostgreSQL ({pg['server']}; {pg['databases']}; `fsync` and "
        "`synchronous_commit` off there, as SQLite's WAL at `synchronous=NORMAL` does not "
        "fsync per commit either): the same `hello` load, the same drivers, after the SQLite "
        f"stack stopped. Throughput {pg_t:.0f} against {sq_t:.0f} tasks/s on SQLite, "
        f"{ratio(pg_t, sq_t):.2f}×; open-loop `hello` p50 {_ms(pg_l['p50'])} (SQLite "
        f"{_ms(sq_l['p50'])}), p99 {_ms(pg_l['p99'])} (SQLite {_ms(sq_l['p99'])}). "
        "`postgresql (<service>)`: the server's backends for that service's database; "
        "`postgresql (server)`: the postmaster and its background processes.\n"
    )


def render(record_path: Path, output: Path) -> None:
    """Rewrite the Markdown report from a results.json (and the limits.md beside it)."""
    record = json.loads(record_path.read_text())
    limits = record_path.parent / "limits.md"
    opts = PeerOptions(output=output, out_dir=record_path.parent)
    output.write_text(markdown(record, limits.read_text() if limits.exists() else None, opts))

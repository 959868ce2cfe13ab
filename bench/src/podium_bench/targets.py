"""The targets of issue 8 (with issues 2 and 4), each with its goal, what was
measured and whether it was met."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from podium_bench.idle import IDLE_GOALS
from podium_bench.stats import ratio


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    f = results["figures"]
    p, t = f["podium"], f.get("temporal", {})
    raw50 = p["raw_hop_ms"]["median"]["p50"]
    one50 = p["latency"]["hello"]["median"]["p50"]
    tput = p["throughput"]["median"]["tasks_per_s"]
    out: list[Target] = []
    x = ratio(one50, 3 * raw50)
    out.append(
        Target("one-step p50 vs raw three-hop", "≤ 2× (3 × raw hop p50)", f"{x:.1f}×", x <= 2)
    )
    three50 = p["latency"]["chain3"]["median"]["p50"]
    per_step = ratio(three50 / 3, one50)
    out.append(
        Target(
            "per-step latency, three-step ÷ one-step (issue 3)",
            "≤ 2×",
            f"{per_step:.2f}× ({three50:.1f} ms ÷ 3 vs {one50:.1f} ms)",
            per_step <= 2,
        )
    )
    if "latency" in t:
        tl = t["latency"]["hello"]["median"]["p50"]
        speed = ratio(tl, one50)
        out.append(
            Target(
                "one-step p50, Temporal ÷ podium",
                "≥ 10×",
                f"{speed:.1f}× (podium {one50:.1f} ms, Temporal {tl:.1f} ms)",
                speed >= 10,
            )
        )
        tt = t["throughput"]["median"]["tasks_per_s"]
        more = ratio(tput, tt)
        out.append(
            Target(
                "throughput, podium ÷ Temporal",
                "≥ 10×",
                f"{more:.1f}× ({tput:.0f} vs {tt:.0f} tasks/s)",
                more >= 10,
            )
        )
    else:
        out.append(
            Target("podium vs Temporal", "≥ 10× latency and throughput", "Temporal not run", None)
        )
    for key, name in (("restate", "Restate"), ("dbos", "DBOS")):
        out.append(_ahead_of(name, f.get(key, {}), one50, tput))
    sc = p["scaling"]["scaling"]
    for n, goal in (("2", 0.95), ("4", 0.90)):
        if n in sc:
            e = sc[n]["efficiency"]
            out.append(Target(f"podium E({n})", f"≥ {goal:.2f}", f"{e:.3f}", e >= goal))
    single = p["scaling"]["single"]
    out.append(
        Target(
            f"one replica at concurrency {single['concurrency']} (issue 4)",
            "≥ 0.90 of ideal",
            f"{single['ratio_to_ideal']:.3f}",
            single["ratio_to_ideal"] >= 0.9,
        )
    )
    rec = f["recovery"]
    rr = rec["median"]["ratio_to_session_timeout"]
    ok = rr <= 1.35 and rec["lost_total"] == 0 and rec["doubled_total"] == 0
    out.append(
        Target(
            "recovery after kill -9",
            "≤ 1.35× session timeout, 0 lost, 0 doubled",
            f"{rr:.2f}× ({rec['median']['recovered_s']:.1f} s), "
            f"{rec['lost_total']} lost, {rec['doubled_total']} doubled"
            + _failover_note(rec["median"]),
            ok,
        )
    )
    out.append(postgres_target(tput, p.get("postgres")))
    out.append(idle_target(p.get("idle")))
    out.append(Target("one-step p50 (issue 2)", "< 10 ms", f"{one50:.1f} ms", one50 < 10))
    out.append(Target("throughput (issue 2)", "> 300 tasks/s", f"{tput:.0f} tasks/s", tput > 300))
    return [asdict(x) for x in out]


def _ahead_of(name: str, side: dict[str, Any], one50: float, tput: float) -> Target:
    """Issue 18: podium ahead of a durable peer on one-step p50 and on tasks/s."""
    goal = "podium ahead on both"
    title = f"one-step p50 and throughput, podium vs {name} (issue 18)"
    if "latency" not in side or "throughput" not in side:
        why = side.get("unavailable") or side.get("skipped") or "not measured"
        return Target(title, goal, f"{name} not run: {why}", None)
    pl = side["latency"]["hello"]["median"]["p50"]
    pt = side["throughput"]["median"]["tasks_per_s"]
    return Target(
        title,
        goal,
        f"p50 {one50:.1f} vs {pl:.1f} ms ({ratio(one50, pl):.2f}×); "
        f"{tput:.0f} vs {pt:.0f} tasks/s ({ratio(tput, pt):.2f}×)",
        one50 < pl and tput > pt,
    )


def _failover_note(median: dict[str, float]) -> str:
    if "broker_failover_s" not in median:
        return ""
    return (
        f"; the broker alone takes {median['broker_failover_s']:.1f} s to fail over bare "
        f"consumers, so podium's recovery is {median['ratio_to_broker_failover']:.2f}× that"
    )


def postgres_target(sqlite_tput: float, pg: dict[str, Any] | None) -> Target:
    """The stack's throughput with every service on PostgreSQL against the SQLite
    stack's of the same run (issue 18): at least half."""
    name, goal = "throughput on PostgreSQL ÷ on SQLite (issue 18)", "≥ 0.50"
    if pg is None or "throughput" not in pg:
        why = (pg or {}).get("skipped", "not run")
        return Target(name, goal, f"not measured: {why}", None)
    tput = pg["throughput"]["median"]["tasks_per_s"]
    x = ratio(tput, sqlite_tput)
    return Target(name, goal, f"{x:.2f} ({tput:.0f} vs {sqlite_tput:.0f} tasks/s)", x >= 0.5)


def idle_target(idle: dict[str, Any] | None) -> Target:
    """An idle stack's CPU, broker included, against its broker's goal (issue 18)."""
    if idle is None:
        return Target(
            "idle stack (issue 18)", "≤ 0.05 core on Kafka, ≤ 0.10 on Tansu", "not run", None
        )
    kind = idle["broker_kind"]
    goal = IDLE_GOALS.get(kind)
    measured = (
        f"{idle['total']:.3f} core on {kind} (services {idle['services']:.3f}, "
        f"broker {idle['broker']:.3f})"
    )
    if goal is None:
        return Target("idle stack (issue 18)", "a known broker kind", measured, None)
    return Target(
        f"idle stack on {kind} (issue 18)", f"≤ {goal:.2f} core", measured, idle["total"] <= goal
    )

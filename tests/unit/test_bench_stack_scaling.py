"""The whole-stack scaling section of the bench (issue 18, item 4): its arithmetic
(S(n), E(n), cores busy, the CPU ceiling), the partition check, and its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podium_bench.report import render
from podium_bench.stack_figures import (
    cpu_ceiling,
    cpu_groups,
    curve,
    markdown,
    too_few_partitions,
)
from podium_bench.stack_scaling import backend_database, consumed_topics
from podium_shared import Topics
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def run(tasks_per_s: float, cpu: float, client: float, by: dict[str, float]) -> dict[str, Any]:
    """One throughput run as podium_bench.drivers.throughput_run returns it."""
    return {
        "tasks_per_s": tasks_per_s,
        "cpu_s_per_1000": cpu,
        "client_cpu_s_per_1000": client,
        "cpu_s_per_1000_by_process": by,
        "processes": 9,
    }


ROUNDS = [
    {
        "1": run(200.0, 5.0, 1.0, {"router": 2.0, "executor": 1.0, "broker (tansu)": 2.0}),
        "2": run(300.0, 6.0, 1.0, {"router": 3.0, "executor": 1.0, "broker (tansu)": 2.0}),
        "4": run(320.0, 7.0, 1.0, {"router": 3.5, "executor": 1.5, "broker (tansu)": 2.0}),
    },
    {
        "1": run(100.0, 4.0, 2.0, {"router": 1.0, "executor": 1.0, "broker (tansu)": 2.0}),
        "2": run(180.0, 6.0, 2.0, {"router": 3.0, "executor": 1.0, "broker (tansu)": 2.0}),
        "4": run(200.0, 9.0, 1.0, {"router": 4.5, "executor": 2.5, "broker (tansu)": 2.0}),
    },
    {
        "1": run(150.0, 6.0, 1.0, {"router": 3.0, "executor": 1.0, "broker (tansu)": 2.0}),
        "2": run(150.0, 6.0, 1.0, {"router": 3.0, "executor": 1.0, "broker (tansu)": 2.0}),
        "4": run(600.0, 8.0, 1.0, {"router": 4.0, "executor": 2.0, "broker (tansu)": 2.0}),
    },
]


def test_speedup_and_efficiency_compare_each_round_with_its_own_n_1() -> None:
    c = curve(ROUNDS, cores=2)
    assert list(c) == ["1", "2", "4"]
    assert [c[n]["tasks_per_s"] for n in c] == [150.0, 180.0, 320.0]
    # Per round: S(2) = 1.5, 1.8, 1.0 -> median 1.5; S(4) = 1.6, 2.0, 4.0 -> 2.0. The
    # ratio of the medians (180/150, 320/150) would mix rounds and say otherwise.
    assert c["1"]["speedup"] == c["1"]["efficiency"] == 1.0
    assert c["2"]["speedup"] == pytest.approx(1.5)
    assert c["2"]["efficiency"] == pytest.approx(0.75)
    assert c["4"]["speedup"] == pytest.approx(2.0)
    assert c["4"]["efficiency"] == pytest.approx(0.5)
    assert c["4"]["tasks_per_s_runs"] == [320.0, 200.0, 600.0]
    assert (c["4"]["routers"], c["4"]["executors"]) == (4, 4)


def test_cpu_per_task_cores_busy_and_the_ceiling() -> None:
    c = curve(ROUNDS, cores=2)
    assert c["1"]["cpu_s_per_1000"] == 5.0
    assert c["1"]["client_cpu_s_per_1000"] == 1.0
    assert c["1"]["cpu_by_role"] == {"broker (tansu)": 2.0, "executor": 1.0, "router": 2.0}
    # Cores busy: (stack + load generator) CPU per task x tasks/s, per run: 200 x 6 / 1000
    # = 1.2, 100 x 6 / 1000 = 0.6, 150 x 7 / 1000 = 1.05 -> median 1.05.
    assert c["1"]["cores_busy"] == pytest.approx(1.05)
    # Ceiling: 2 cores / the median of (stack + load generator) CPU per task, 6 -> 333/s.
    assert c["1"]["cpu_ceiling_tasks_per_s"] == pytest.approx(2000 / 6)
    assert c["4"]["cpu_ceiling_tasks_per_s"] == pytest.approx(2000 / 9)


def test_the_ceiling_is_cores_over_cpu_per_task() -> None:
    assert cpu_ceiling(2, 5.0) == pytest.approx(400.0)
    assert cpu_ceiling(8, 5.0) == pytest.approx(1600.0)
    with pytest.raises(ValueError):
        cpu_ceiling(2, 0.0)


def test_a_curve_without_n_1_counts_from_its_smallest_n() -> None:
    rounds = [{"4": run(400.0, 5.0, 1.0, {}), "2": run(250.0, 5.0, 1.0, {})}]
    c = curve(rounds, cores=2)
    assert list(c) == ["2", "4"]
    assert c["4"]["speedup"] == pytest.approx(1.6)
    assert c["4"]["efficiency"] == pytest.approx(0.8)  # 1.6 for twice the replicas
    with pytest.raises(ValueError):
        curve([], cores=2)


def test_the_declared_topics_have_partitions_for_four_routers_and_executors() -> None:
    topics = Topics("bench")
    specs = topics.declarations(("default",))
    consumed = consumed_topics(topics)
    assert consumed == [topics.tasks, topics.step_results, topics.steps("default")]
    assert too_few_partitions(specs, consumed, 4) == []
    # A fifth router would find no partition of the tasks or step-results topics.
    assert too_few_partitions(specs, consumed, 5) == [
        f"{topics.tasks} (4)",
        f"{topics.step_results} (4)",
    ]
    assert too_few_partitions(specs, ["undeclared"], 1) == ["undeclared (0)"]


def test_the_plot_shows_postgresql_backends_as_one_bar() -> None:
    by = {"router": 1.0, "postgresql router": 0.5, "postgresql executor": 0.25, "executor": 2.0}
    assert cpu_groups(by) == {"router": 1.0, "postgresql": 0.75, "executor": 2.0}


def section(database: str = "PostgreSQL") -> dict[str, Any]:
    return {
        "database": database,
        "not_measured": {},
        "cores": 2,
        "broker_kind": "tansu",
        "in_flight": 64,
        "seconds": 10.0,
        "partitions": {"tasks.v1": 4, "step-results.v1": 4, "steps.default.v1": 8},
        "load_average": {"start": [1.2, 1.0, 0.9], "end": [2.5, 1.5, 1.0]},
        "rounds": ROUNDS,
        "curve": curve(ROUNDS, cores=2),
    }


def test_the_section_states_the_cores_beside_the_curve() -> None:
    text = markdown(section())
    assert text.startswith("## 4b. Whole-stack scaling")
    assert "**2 cores**" in text
    assert "every role's database on PostgreSQL (one per role" in text
    assert "| 4 | 320 | 2.00 | 0.50 | 8.00 |" in text
    assert "broker (tansu) 2.00, executor 2.00, router 4.00" in text
    assert "| 1.05 of 2 | 333 |" in text


def test_replica_counts_not_measured_are_said_so() -> None:
    s = section("SQLite")
    s["rounds"] = [{"1": r["1"]} for r in ROUNDS]
    s["curve"] = curve(s["rounds"], cores=2)
    s["not_measured"] = {"2": "replicas need a shared database (no server)"}
    text = markdown(s)
    assert "every role's database on SQLite, each executor at concurrency 64" in text
    assert "PostgreSQL backends" not in text
    assert "| 2 | not measured: replicas need a shared database (no server) |" in text
    assert "| 4 |" not in text


def test_the_report_renders_the_section_and_its_plot(tmp_path: Path) -> None:
    record = json.loads((REPO / "docs" / "bench" / "results.json").read_text())
    record["figures"]["stack_scaling"] = section()
    record["plots"] = [*record.get("plots", []), "stack-scaling.png"]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(record))
    render(tmp_path / "bench" / "results.json", tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert text.index("## 4. I/O-bound scaling") < text.index("## 4b. Whole-stack")
    assert text.index("## 4b. Whole-stack") < text.index("## 5. Recovery")
    assert "![whole-stack scaling](bench/stack-scaling.png)" in text


def test_the_plot_is_written(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from podium_bench.plots import stack_scaling_plot

    name = stack_scaling_plot(plt, section(), tmp_path)
    assert name == "stack-scaling.png"
    assert (tmp_path / name).stat().st_size > 10_000


def test_a_backend_is_known_by_its_database_from_its_process_title() -> None:
    title = "postgres: postgres podium_bench_api_1a2b 127.0.0.1(43210) idle"
    assert backend_database([title, "", "", ""]) == "podium_bench_api_1a2b"
    assert backend_database(["postgres: postgres db [local] idle in transaction"]) == "db"
    # The server's own processes serve no database.
    assert backend_database(["postgres: walwriter ", "", ""]) is None
    assert backend_database(["postgres: autovacuum launcher ", ""]) is None
    assert backend_database(["postgres: logical replication launcher "]) is None
    assert backend_database(["python", "-m", "podium_router"]) is None
    assert backend_database([]) is None

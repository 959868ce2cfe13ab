"""`podium bench --quick`: every figure with tiny counts, so the benchmark cannot
rot, Temporal's and the plots included (the bench package, bench/, brings them;
`make test` installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# `podium bench --quick` starts its own (embedded) broker, so it runs in the Tansu tier only.
pytestmark = [pytest.mark.e2e, pytest.mark.own_broker, pytest.mark.timeout(900)]


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out_dir, report = tmp_path / "bench", tmp_path / "benchmarks.md"
    env = {**os.environ, "PODIUM_HOME": str(tmp_path / "home")}
    args = ["bench", "--quick", "--json", "--output", str(report), "--out-dir", str(out_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "podium", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=860,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    f = results["figures"]

    podium = f["podium"]
    assert podium["raw_hop_ms"]["median"]["p50"] > 0
    assert podium["sqlite_commit_ms"]["median"]["p50"] > 0
    for workflow in ("hello", "chain3"):
        lat = podium["latency"][workflow]["median"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"]
    assert podium["throughput"]["median"]["tasks_per_s"] > 0
    assert podium["throughput"]["median"]["cpu_s_per_1000"] > 0
    assert {"router", "executor", "broker (tansu)"} <= set(podium["throughput"]["peak_rss_mib"])
    # Where one task's time goes: every task's trace read back, its stages tiling its latency.
    stages = podium["stages"]
    assert stages["tasks"] == 5, stages
    assert all(s["p50_ms"] >= 0 for s in stages["stages"])
    assert 0 < sum(stages["by_kind_ms"].values()) <= 2 * stages["total_p50_ms"]
    assert "Where one task's time goes" in report.read_text()
    assert podium["scaling"]["scaling"]["1"]["efficiency"] == 1.0
    assert podium["scaling"]["scaling"]["2"]["steps_s"] > 0

    # The stack again on PostgreSQL (issue 18); only a machine without a server skips it.
    pg = podium["postgres"]
    if "skipped" in pg:
        assert not os.environ.get("CI"), pg["skipped"]
        assert pg["skipped"].startswith("no PostgreSQL server"), pg["skipped"]
    else:
        assert pg["latency"]["hello"]["median"]["p50"] > 0
        assert pg["throughput"]["median"]["tasks_per_s"] > 0
        counted = set(pg["throughput"]["cpu_by_process"])
        assert {"router", "executor", "broker (tansu)"} <= counted
        assert {"postgresql (router)", "postgresql (executor)", "postgresql (server)"} <= counted
        assert "podium on PostgreSQL" in report.read_text()

    stack = f["stack_scaling"]  # n routers and n executors: 1 and 2 under --quick
    assert stack["curve"]["1"]["efficiency"] == 1.0
    assert stack["curve"]["1"]["cpu_s_per_1000"] > 0
    assert stack["cores"] >= 1
    if stack["database"] == "PostgreSQL":
        assert stack["curve"]["2"]["tasks_per_s"] > 0
        assert stack["curve"]["2"]["cpu_by_role"]["postgresql router"] > 0
    else:
        assert "2" in stack["not_measured"]

    recovery = f["recovery"]
    assert recovery["median"]["in_flight_at_kill"] > 0
    assert recovery["lost_total"] == 0
    assert recovery["doubled_total"] == 0
    # The baseline: the broker's own failover can't beat the session timeout (10 s).
    assert recovery["median"]["broker_failover_s"] >= 10
    assert recovery["median"]["ratio_to_broker_failover"] > 0

    temporal = f["temporal"]
    assert temporal["latency"]["hello"]["median"]["p50"] > 0
    assert temporal["latency"]["chain3"]["median"]["p50"] > 0
    assert temporal["throughput"]["median"]["tasks_per_s"] > 0
    assert temporal["scaling"]["2"]["steps_s"] > 0
    assert "temporal server" in temporal["throughput"]["peak_rss_mib"]
    assert "temporal worker" in temporal["throughput"]["peak_rss_mib"]

    assert f["tracing"]["tasks_per_s"]["off"] > 0
    assert f["tracing"]["tasks_per_s"]["local"] > 0
    assert f["memory"]["figures"]["entries"] == 300
    assert "replay_records_s" in f["recovery_service"]["figures"]
    assert results["versions"]["python"]
    assert {t["name"] for t in results["targets"]} >= {
        "recovery after kill -9",
        "throughput on PostgreSQL ÷ on SQLite (issue 18)",
    }

    record = json.loads((out_dir / "results.json").read_text())
    assert "samples" not in record["figures"]["podium"]["latency"]["hello"]  # percentiles only
    text = report.read_text()
    for heading in ("## Targets", "## 1. Baselines", "## 2. Latency", "## 3. Throughput"):
        assert heading in text
    for heading in ("## 4. I/O-bound scaling", "## 5. Recovery", "## 6. Tracing tax"):
        assert heading in text
    assert "recovery ÷ the broker's own failover" in text
    assert (out_dir / "latency-cdf.png").stat().st_size > 0
    assert (out_dir / "scaling.png").stat().st_size > 0
    assert (out_dir / "throughput.png").stat().st_size > 0
    assert (out_dir / "stack-scaling.png").stat().st_size > 0
    assert "## 4b. Whole-stack scaling" in text

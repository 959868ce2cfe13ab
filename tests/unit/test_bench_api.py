"""The api section of the bench: whether the projection's lag stayed bounded, the
targets of issue 17 against its figures, its report (alone and inside the whole
one, which the other sections keep), and the load generator's bookkeeping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from podium_bench import api_figures, api_load
from podium_bench.api_figures import lag_verdict
from podium_bench.options import PeerOptions
from podium_bench.report import render, write_api_only
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_a_flat_lag_that_drains_is_bounded() -> None:
    samples = [(t / 2, lag) for t, lag in enumerate([300, 900, 400, 1100, 700, 950, 800, 1000])]
    verdict = lag_verdict(samples, load_s=4.0, drained_s=0.8, events_per_s=500)
    assert verdict.bounded, verdict.why


def test_a_lag_that_grows_with_time_is_not_bounded() -> None:
    # A projection slower than the stack: the lag grows in proportion to time.
    samples = [(t / 2, 400 * t) for t in range(1, 21)]  # 200 ... 4,000 over 10 s
    verdict = lag_verdict(samples, load_s=10.0, drained_s=6.0, events_per_s=1000)
    assert not verdict.bounded
    assert "grew" in verdict.why


def test_a_lag_that_never_drains_is_not_bounded() -> None:
    verdict = lag_verdict([(0.5, 10), (1.0, 10)], load_s=1.0, drained_s=None, events_per_s=100)
    assert not verdict.bounded
    assert "never drained" in verdict.why


def test_a_lag_under_one_second_of_events_is_noise_not_growth() -> None:
    # From 1 to 70 events is a 70-fold rise, but less than a second of the stack's events.
    samples = [(0.5, 1), (1.0, 2), (1.5, 40), (2.0, 70)]
    verdict = lag_verdict(samples, load_s=2.0, drained_s=0.3, events_per_s=200)
    assert verdict.bounded, verdict.why


def test_no_sample_during_the_load_proves_nothing() -> None:
    verdict = lag_verdict([(5.0, 0)], load_s=2.0, drained_s=0.1, events_per_s=100)
    assert not verdict.bounded


def _case(name: str, kind: str, p50: float, p99: float) -> dict[str, Any]:
    return {"name": name, "kind": kind, "ms": {"p50": p50, "p99": p99, "p99.9": p99, "n": 9.0}}


def figures() -> dict[str, Any]:
    read = {
        "seed_s": 12.0,
        "baseline_ms": {"p50": 1.0, "p99": 2.0, "p99.9": 3.0, "n": 9.0},
        "cases": [
            _case("runs list, first page", api_figures.LIST, 4.0, 49.0),
            _case("run page, 50 steps", api_figures.RUN_PAGE, 30.0, 120.0),
            _case("run page, 2 steps", "", 3.0, 200.0),  # held to no target
        ],
        "api_cpu_ms_per_request": 2.5,
    }
    lag = {
        "bounded": True,
        "why": "kept up",
        "peak": 40,
        "at_load_end": 3,
        "drained_s": 0.2,
        "series": [[0.5, 40], [1.0, 3]],
    }
    return {
        "date": "2026-12-02 02:50 UTC",
        "options": {
            "runs": 100_000,
            "big_runs": 100,
            "steps": 50,
            "requests": 1000,
            "warmup": 50,
            "in_flight": 64,
            "throughput_s": 10.0,
            "lag_every_s": 0.5,
        },
        "read": {"SQLite": read, "PostgreSQL": {"skipped": "no server"}},
        "projection": {
            "runs": [
                {"database": None, "tasks": 3000, "tasks_per_s": 300.0},
                {
                    "database": "SQLite",
                    "tasks": 2700,
                    "tasks_per_s": 270.0,
                    "events": 10_800,
                    "events_per_task": 4.0,
                    "api_cpu_s_per_1000_events": 0.9,
                    "api_share_of_stack_cpu": 0.2,
                    "lag": lag,
                },
            ]
        },
        "load_average": {"start": [0.5, 0.6, 0.7], "end": [1.5, 1.0, 0.8]},
    }


def test_targets_hold_the_list_and_the_run_page_and_the_lag() -> None:
    rows = api_figures.targets(figures())
    by_name = {r["name"]: r for r in rows}
    assert by_name["runs list, first page (SQLite)"]["met"] is True  # 49 ms ≤ 50 ms
    assert by_name["run page, 50 steps (SQLite)"]["met"] is False  # 120 ms > 100 ms
    assert by_name["projection keeps up at full throughput (SQLite)"]["met"] is True
    assert not any("2 steps" in r["name"] for r in rows)
    assert not any("PostgreSQL" in r["name"] for r in rows)  # skipped: no figure, no target


def test_the_section_says_what_was_not_measured_and_the_load() -> None:
    f = figures()
    f["targets"] = api_figures.targets(f)
    text = api_figures.markdown(f)
    assert text.startswith("## The api service")
    assert "PostgreSQL: not measured (no server)." in text
    assert "| runs list, first page | 4.00 / 49.0 ms | 24.5× |" in text
    assert "**not met**" in text
    assert "0.50 / 0.60 / 0.70" in text
    assert "| api on SQLite | 270 | 0.90 | 0.90 (10,800 events, 4.0 per task) |" in text


def test_the_api_section_alone_joins_the_whole_reports_figures(tmp_path: Path) -> None:
    """`podium bench --only api`: the other sections' figures stay as the last whole
    run left them, and the report is that run's plus the api section."""
    out = tmp_path / "bench"
    shutil.copytree(REPO / "docs" / "bench", out)
    before = json.loads((out / "results.json").read_text())
    before["figures"].pop("api", None)
    (out / "results.json").write_text(json.dumps(before))
    opts = PeerOptions(output=tmp_path / "benchmarks.md", out_dir=out)
    section = figures()
    section["targets"] = api_figures.targets(section)
    write_api_only(section, opts)
    after = json.loads((out / "results.json").read_text())
    assert after["figures"]["api"]["read"]["SQLite"]["seed_s"] == 12.0
    assert {k: v for k, v in after["figures"].items() if k != "api"} == before["figures"]
    report = opts.output.read_text() if opts.output else ""
    assert report.startswith("# Benchmarks: podium beside Temporal")
    assert "## Recovery service" in report
    assert report.rstrip().endswith("(events, every 0.5 s): 40, 3.")
    render(out / "results.json", tmp_path / "again.md")  # render gives the same text
    assert (tmp_path / "again.md").read_text() == report


def test_the_api_section_alone_before_any_whole_run(tmp_path: Path) -> None:
    opts = PeerOptions(output=tmp_path / "b.md", out_dir=tmp_path / "bench")
    write_api_only(figures() | {"targets": []}, opts)
    assert (tmp_path / "b.md").read_text().startswith("# Benchmarks\n\n## The api service")


def test_the_load_generator_takes_the_cases_in_turn_and_drops_the_warmup() -> None:
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, json={})

    plan = {
        "url": "http://api",
        "tokens": {"every": "pdm_x"},
        "warmup": 1,
        "requests": 2,
        "cases": [
            {"name": "healthz", "path": "/healthz"},
            {"name": "run", "paths": ["/v1/runs/a", "/v1/runs/b"], "token": "every"},
        ],
    }
    samples = api_load.run(plan, httpx.MockTransport(answer))
    assert {k: len(v) for k, v in samples.items()} == {"healthz": 2, "run": 2}
    assert seen == [
        ("/healthz", None),
        ("/v1/runs/a", "Bearer pdm_x"),
        ("/healthz", None),
        ("/v1/runs/b", "Bearer pdm_x"),
        ("/healthz", None),
        ("/v1/runs/a", "Bearer pdm_x"),
    ]


def test_the_load_generator_stops_at_a_failed_request() -> None:
    plan = {
        "url": "http://api",
        "tokens": {"every": "pdm_x"},
        "warmup": 0,
        "requests": 3,
        "cases": [{"name": "runs", "path": "/v1/runs", "token": "every"}],
    }
    transport = httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "no"}))
    with pytest.raises(SystemExit, match="answered 401"):
        api_load.run(plan, transport)


def test_only_names_a_section_the_bench_has(capsys: pytest.CaptureFixture[str]) -> None:
    from podium import cli

    with pytest.raises(SystemExit) as exit_:
        cli.app(["bench", "--only", "memory"], standalone_mode=False)
    assert exit_.value.code == cli.EXIT_USAGE
    assert "--only: no section 'memory'; choose api" in capsys.readouterr().err

"""`python -m podium_bench.event_loop`: the interleaved A/B of the stack's event loop
and database (issue 18): the order of each round, the ratios to the same round's
baseline, and which loop each service said it ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from podium_bench.event_loop import loops_in_logs, rotated, summarise

pytestmark = pytest.mark.unit


def test_every_variant_runs_in_every_position_once() -> None:
    assert rotated(["a", "b", "c"], 3) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert rotated(["a", "b"], 3) == [["a", "b"], ["b", "a"], ["a", "b"]]


def test_ratios_are_taken_within_a_round_then_the_median() -> None:
    def run(tput: float, cpu: float) -> dict[str, float]:
        return {"tasks_per_s": tput, "cpu_s_per_1000": cpu}

    rounds = [
        {"asyncio": run(100, 4.0), "uvloop": run(120, 3.0)},
        {"asyncio": run(200, 4.0), "uvloop": run(220, 4.0)},  # a quieter machine
        {"asyncio": run(100, 5.0), "uvloop": run(130, 4.0)},
    ]
    s = summarise(rounds)
    assert s["asyncio"] == {
        "tasks_per_s": 100,
        "cpu_s_per_1000": 4.0,
        "tput_ratio": 1.0,
        "cpu_ratio": 1.0,
    }
    assert s["uvloop"]["tasks_per_s"] == 130
    assert s["uvloop"]["tput_ratio"] == pytest.approx(1.2)  # of 1.2, 1.1, 1.3
    assert s["uvloop"]["cpu_ratio"] == pytest.approx(0.8)  # of 0.75, 1.0, 0.8


def test_each_service_log_names_its_loop(tmp_path: Path) -> None:
    (tmp_path / "router.log").write_text('{"event": "service started", "event_loop": "uvloop"}\n')
    (tmp_path / "memory.log").write_text("service started event_loop=asyncio.unix_events\n")
    (tmp_path / "recovery.log").write_text("starting\n")
    assert loops_in_logs(tmp_path) == {"memory": "asyncio", "recovery": "?", "router": "uvloop"}

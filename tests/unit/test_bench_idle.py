"""The idle-stack figure of `make bench` (podium_bench.idle) and its target."""

from __future__ import annotations

import pytest

from podium_bench.idle import cores_used, idle_figure, idle_line, measure_idle
from podium_bench.targets import idle_target

pytestmark = pytest.mark.unit


def test_cores_are_cpu_seconds_over_the_window_and_a_vanished_process_is_left_out() -> None:
    before = {"router": 10.0, "broker (tansu)": 3.0, "gone": 1.0}
    after = {"router": 10.3, "broker (tansu)": 4.5}
    assert cores_used(before, after, 30.0) == pytest.approx(
        {"router": 0.01, "broker (tansu)": 0.05}
    )
    with pytest.raises(ValueError, match="longer than zero"):
        cores_used(before, after, 0)


def test_the_figure_puts_the_broker_apart_from_the_services() -> None:
    fig = idle_figure({"router": 0.01, "memory": 0.02, "broker (kafka)": 0.015})
    assert fig["services"] == pytest.approx(0.03)
    assert fig["broker"] == pytest.approx(0.015)
    assert fig["total"] == pytest.approx(0.045)


def idle(total_broker: float, kind: str) -> dict[str, object]:
    return {
        **idle_figure({"router": 0.01, f"broker ({kind})": total_broker}),
        "broker_kind": kind,
        "window_s": 30.0,
        "load_average": [1.2, 1.0, 0.9],
    }


def test_the_target_is_the_brokers_goal_with_the_broker_counted() -> None:
    assert idle_target(idle(0.03, "kafka")).met is True  # 0.04 ≤ 0.05
    assert idle_target(idle(0.05, "kafka")).met is False  # 0.06 > 0.05
    assert idle_target(idle(0.08, "tansu")).met is True  # 0.09 ≤ 0.10
    missed = idle_target(idle(0.2, "tansu"))
    assert missed.met is False and "0.210 core on tansu" in missed.measured
    assert idle_target(None).met is None


def test_the_report_line_names_the_load_and_every_process() -> None:
    line = idle_line(idle(0.03, "kafka"))
    assert "load average 1.2" in line and "router 0.010" in line and "≤ 0.05 on kafka" in line


def test_measure_reads_cpu_before_and_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([{"router": 1.0}, {"router": 1.6}])
    monkeypatch.setattr("podium_bench.idle.system_processes", lambda kind: {"router": object()})
    monkeypatch.setattr("podium_bench.idle.cpu_seconds", lambda procs: next(readings))
    slept: list[float] = []
    ticks = iter([100.0, 130.0])
    fig = measure_idle(30.0, 5.0, sleep=slept.append, clock=lambda: next(ticks))
    assert slept == [5.0, 30.0]
    assert fig["per_process"] == pytest.approx({"router": 0.02})

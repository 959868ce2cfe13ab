"""The benchmark's statistics: percentiles, ratios, E(n), medians of repeated
runs, the open-loop schedule, the profile parser's bookkeeping, and the report
rendered from a results.json."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path

import pytest

from podium_bench.drivers import closed_loop, open_loop
from podium_bench.profiling import parse_collapsed
from podium_bench.report import render
from podium_bench.stats import (
    cdf,
    efficiency,
    median,
    median_of,
    open_loop_schedule,
    percentile,
    ratio,
    summary,
)
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 99.9) == pytest.approx(99.901)
    assert percentile([5.0], 99.9) == 5.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter


def test_p999_sees_the_one_slow_sample_in_a_thousand() -> None:
    values = [1.0] * 999 + [1000.0]
    s = summary(values)
    assert s["p50"] == 1.0
    assert s["p99"] == 1.0
    assert s["p99.9"] == pytest.approx(1.0 + 0.001 * 999)  # between rank 998 and 999
    assert s["n"] == 1000


@pytest.mark.parametrize("q", [-1, 100.1])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_needs_a_positive_baseline() -> None:
    assert ratio(6.0, 3.0) == 2.0
    with pytest.raises(ValueError):
        ratio(1.0, 0.0)


def test_efficiency_is_throughput_over_n_times_one() -> None:
    assert efficiency(160.0, 2, 80.0) == 1.0
    assert efficiency(288.0, 4, 80.0) == pytest.approx(0.9)
    assert efficiency(80.0, 1, 80.0) == 1.0
    with pytest.raises(ValueError):
        efficiency(1.0, 0, 1.0)


def test_median_of_repeats_key_by_key() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    runs = [{"p50": 1.0, "p99": 9.0}, {"p50": 3.0, "p99": 7.0}, {"p50": 2.0, "p99": 8.0, "x": 1.0}]
    assert median_of(runs) == {"p50": 2.0, "p99": 8.0}  # "x" is not in every run
    with pytest.raises(ValueError):
        median_of([])


def test_open_loop_schedule_is_fixed_rate() -> None:
    offsets = open_loop_schedule(20, 2)
    assert len(offsets) == 40
    assert offsets[0] == 0
    assert all(math.isclose(b - a, 0.05) for a, b in itertools.pairwise(offsets))
    assert open_loop_schedule(10, 0.01) == [0.0]  # at least one task
    with pytest.raises(ValueError):
        open_loop_schedule(0, 1)


def test_cdf_is_sorted_and_reaches_one() -> None:
    xs, ys = cdf([3.0, 1.0, 2.0, 4.0])
    assert xs == [1.0, 2.0, 3.0, 4.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]


async def test_open_loop_submits_on_schedule_whatever_calls_take() -> None:
    """A slow call does not delay the next submission, and its latency counts
    from its scheduled time (no coordinated omission)."""
    started: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def call(i: int) -> None:
        started.append(loop.time() - t0)
        await asyncio.sleep(0.3 if i == 0 else 0.0)

    latencies = await open_loop(call, rate_per_s=50, seconds=0.2)
    assert len(latencies) == 10
    assert started[1] < 0.1  # the second went out while the first was still running
    assert max(latencies) >= 300
    assert sorted(latencies)[5] < 100


async def test_closed_loop_keeps_n_in_flight_for_the_duration() -> None:
    in_flight = 0
    peak = 0

    async def call(_i: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    done, elapsed = await closed_loop(call, in_flight=4, seconds=0.2)
    assert peak == 4
    assert 0.2 <= elapsed < 1.0
    assert done >= 4 * 5  # at least a quarter of the ideal, on a busy machine


def test_collapsed_stacks_are_attributed_by_leaf_and_podium_frame() -> None:
    text = "\n".join(
        [
            "run (podium_router/app.py:10);execute (sqlalchemy/engine/base.py:1) 6",
            "run (podium_router/app.py:10);send (aiokafka/producer.py:5) 3",
            "select (selectors.py:468) 1",
            "garbage line",
        ]
    )
    total, categories, frames = parse_collapsed(text)
    assert total == 10
    assert categories["database (SQLAlchemy + sqlite3)"] == 6
    assert categories["Kafka client (aiokafka)"] == 3
    assert categories["event loop (asyncio, selectors)"] == 1
    assert frames["run (podium_router/app.py:10)"] == 9


@pytest.mark.parametrize("folder", ["bench", "bench-kafka"])
def test_the_committed_report_is_its_results_rendered(folder: str, tmp_path: Path) -> None:
    """docs/benchmarks*.md is what `make bench` wrote: rendering the results.json
    beside it (and its limits.md) gives the same text, plot links included."""
    docs = REPO / "docs"
    report = docs / ("benchmarks.md" if folder == "bench" else "benchmarks-kafka.md")
    render(docs / folder / "results.json", tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert text == report.read_text()
    assert f"]({folder}/latency-cdf.png)" in text

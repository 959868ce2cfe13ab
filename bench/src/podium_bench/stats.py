"""Small, tested statistics for the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float, baseline: float) -> float:
    if baseline <= 0:
        raise ValueError("baseline must be positive")
    return value / baseline


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and p99.9 of a sample, and its size."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "p99.9": percentile(values, 99.9),
        "n": float(len(values)),
    }


def median(values: Sequence[float]) -> float:
    """The median of repeated runs (the figure a benchmark reports)."""
    return percentile(values, 50)


def median_of(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key by key, the median of repeated runs' figures (keys every run has)."""
    if not runs:
        raise ValueError("median of no runs")
    keys = set(runs[0]).intersection(*runs[1:])
    return {k: median([r[k] for r in runs]) for k in sorted(keys)}


def efficiency(throughput_n: float, n: int, throughput_1: float) -> float:
    """Scaling efficiency E(n) = T(n) / (n · T(1)); 1.0 is linear."""
    if n < 1:
        raise ValueError("n must be at least 1")
    return ratio(throughput_n, n * throughput_1)


def open_loop_schedule(rate_per_s: float, seconds: float) -> list[float]:
    """Offsets (s) at which an open-loop driver submits: every 1/rate, for
    ``seconds``, regardless of how earlier submissions fare."""
    if rate_per_s <= 0 or seconds <= 0:
        raise ValueError("rate and duration must be positive")
    count = max(1, round(rate_per_s * seconds))
    return [i / rate_per_s for i in range(count)]


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and the fraction of the sample at or below each."""
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]

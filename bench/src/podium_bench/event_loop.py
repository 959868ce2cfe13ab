"""An A/B of the stack's configurations, interleaved (issue 18): `hello` throughput
with ``in_flight`` tasks outstanding and CPU-seconds per 1,000 tasks by process, each
variant on a stack of its own, round after round, the order rotated every round so
that each variant runs in each position once (a drift of the machine's load does not
favour one). Variants: the services' event loop (``PODIUM_EVENT_LOOP``: asyncio or
uvloop) on SQLite, and the default loop with every service on PostgreSQL.

    python -m podium_bench.event_loop --rounds 3 --seconds 10 --json ab.json

Every figure is also given as a ratio to the first variant of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from podium.client import PodiumClient
from podium.stack import Stack
from podium_bench.api import postgres_admin_url
from podium_bench.drivers import closed_loop, podium_call, throughput_run, warm
from podium_bench.options import PeerOptions
from podium_bench.processes import system_processes
from podium_bench.stack_postgres import on_databases, postgres_processes, service_databases
from podium_bench.stats import median, ratio
from podium_shared import Settings

# (name, PODIUM_EVENT_LOOP, database)
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("sqlite asyncio", "asyncio", "sqlite"),
    ("sqlite uvloop", "uvloop", "sqlite"),
    ("postgresql asyncio", "asyncio", "postgresql"),
)


def rotated(names: list[str], rounds: int) -> list[list[str]]:
    """Each round's order: the names rotated by the round's number."""
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(rounds)]


def loops_in_logs(log_dir: Path) -> dict[str, str]:
    """Each service's event loop, as its 'service started' line names it."""
    out = {}
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        out[log.stem] = (
            "uvloop" if "uvloop" in text else "asyncio" if "asyncio.unix_events" in text else "?"
        )
    return out


@contextlib.contextmanager
def _databases(kind: str) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """({role: URL}, {role: database}) on PostgreSQL; two empty maps for SQLite."""
    if kind == "sqlite":
        yield {}, {}
        return
    admin, why = postgres_admin_url()
    if admin is None:
        raise SystemExit(f"no PostgreSQL server: {why}")
    with service_databases(admin) as urls:
        yield urls, {role: url.rsplit("/", 1)[1] for role, url in urls.items()}


async def _run(settings: Settings, databases: dict[str, str], opts: PeerOptions) -> dict[str, Any]:
    async with PodiumClient(settings) as client:
        call = podium_call(client, "hello")
        await warm(call, opts.warmup)
        await closed_loop(call, opts.in_flight, 1.0)
        procs = {**system_processes("podium"), **postgres_processes(databases)}
        return await throughput_run(call, opts, procs, grouped=True)


def one(settings: Settings, loop: str, kind: str, opts: PeerOptions) -> dict[str, Any]:
    """One variant's stack, one throughput run."""
    home = Path(tempfile.mkdtemp(prefix="podium-bench-ab-"))
    s = settings.model_copy(update={"home": home, "topic_prefix": f"bab{uuid.uuid4().hex[:6]}"})
    with contextlib.ExitStack() as held:
        urls, databases = held.enter_context(_databases(kind))
        stack = held.enter_context(Stack(on_databases(s, urls), env={"PODIUM_EVENT_LOOP": loop}))
        out = asyncio.run(_run(stack.settings, databases, opts))
        out["loops"] = loops_in_logs(stack.log_dir)
    shutil.rmtree(home, ignore_errors=True)
    return out


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: median tasks/s and CPU-s per 1,000, and the median of its per-round
    ratios to the first variant of the same round."""
    names = list(rounds[0])
    base = names[0]
    out = {}
    for name in names:
        runs = [r[name] for r in rounds]
        out[name] = {
            "tasks_per_s": median([x["tasks_per_s"] for x in runs]),
            "cpu_s_per_1000": median([x["cpu_s_per_1000"] for x in runs]),
            "tput_ratio": median(
                [ratio(r[name]["tasks_per_s"], r[base]["tasks_per_s"]) for r in rounds]
            ),
            "cpu_ratio": median(
                [ratio(r[name]["cpu_s_per_1000"], r[base]["cpu_s_per_1000"]) for r in rounds]
            ),
        }
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    from podium.cli_common import load_settings

    parser = argparse.ArgumentParser(prog="python -m podium_bench.event_loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    opts = PeerOptions(throughput_s=args.seconds, in_flight=args.in_flight)
    variants = {name: (loop, kind) for name, loop, kind in VARIANTS}
    settings = load_settings()
    record: dict[str, Any] = {"uptime_before": _uptime(), "rounds": []}
    print(record["uptime_before"], file=sys.stderr)
    for order in rotated(list(variants), args.rounds):
        runs = {}
        for name in order:
            runs[name] = one(settings, *variants[name], opts)
            print(
                f"{name}: {runs[name]['tasks_per_s']:.0f} tasks/s, "
                f"{runs[name]['cpu_s_per_1000']:.2f} CPU-s/1000, loops {runs[name]['loops']}",
                file=sys.stderr,
            )
        record["rounds"].append({n: runs[n] for n in variants})
    record["uptime_after"] = _uptime()
    record["load_average_after"] = list(os.getloadavg())
    record["summary"] = summarise(record["rounds"])
    print(record["uptime_after"], file=sys.stderr)
    text = json.dumps(record, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()

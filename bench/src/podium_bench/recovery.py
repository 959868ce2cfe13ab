"""Recovery: kill -9 one of two executors with work in flight; the time until every
task in flight at the kill has completed, beside the broker's own failover
(podium_bench.failover), with lost and doubled effects counted."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podium.client import PodiumClient
from podium.stack import Stack
from podium_bench.failover import failover_s
from podium_bench.options import PeerOptions
from podium_bench.stats import median_of
from podium_contracts import TaskCompleted, TaskSubmitted
from podium_shared import Settings

# shared/src/podium_shared/kafka.py: every consumer, the executors' included.
SESSION_TIMEOUT_S = 10.0


EFFECT_WORKFLOW = """\
# Written by podium bench: one effect.record step on the default pool.
name: bench-effect
version: 1
steps:
  - id: record
    uses: effect.record
"""


async def _recovery_drive(stack: Stack, path: Path, tasks: int, hold_s: float) -> dict[str, Any]:
    async with PodiumClient(stack.settings) as client:
        ids = [uuid.uuid4().hex for _ in range(tasks)]
        for i, task_id in enumerate(ids):
            await client.submit(
                TaskSubmitted(
                    task_id=task_id,
                    workflow="bench-effect",
                    input={"path": str(path), "value": i, "hold_s": hold_s},
                )
            )
        deadline = time.monotonic() + 60
        while _effect_lines(path) < max(2, tasks // 2):  # steps running on both replicas
            if time.monotonic() > deadline:
                raise TimeoutError("the recovery drill's steps never started")
            await asyncio.sleep(0.01)
        victim = next(p for p in stack.processes if p.name == "executor")
        before = set(client.outcomes)
        killed = time.perf_counter()
        stack.kill(victim)
        in_flight = [t for t in ids if t not in before]
        seen: dict[str, float] = {}
        limit = killed + SESSION_TIMEOUT_S * 6 + hold_s
        while len(seen) < len(in_flight) and time.perf_counter() < limit:
            for t in in_flight:
                if t not in seen and t in client.outcomes:
                    seen[t] = time.perf_counter()
            await asyncio.sleep(0.02)
        completed = [t for t in ids if isinstance(client.outcomes.get(t), TaskCompleted)]
    keys = Counter(json.loads(line)["key"] for line in path.read_text().splitlines() if line)
    recovered_s = (max(seen.values()) - killed) if seen else float("nan")
    return {
        "tasks": tasks,
        "in_flight_at_kill": len(in_flight),
        "recovered_s": recovered_s,
        "ratio_to_session_timeout": recovered_s / SESSION_TIMEOUT_S,
        "lost": tasks - len(completed),
        "effects_doubled": sum(1 for n in keys.values() if n > 1),
        "effects": sum(keys.values()),
    }


def _effect_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line)
    except FileNotFoundError:
        return 0


def recovery_drill(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    runs = []
    for r in range(opts.repeat):
        advance(f"recovery: kill -9 an executor, run {r + 1}/{opts.repeat}")
        home = Path(tempfile.mkdtemp(prefix="podium-bench-recovery-"))
        flows = home / "workflows"
        flows.mkdir()
        (flows / "bench-effect.yaml").write_text(EFFECT_WORKFLOW)
        s = settings.model_copy(
            update={
                "home": home,
                "topic_prefix": f"brec{uuid.uuid4().hex[:6]}",
                "workflows": f"{settings.workflows}:{flows}",
            }
        )
        # effect.record is a drill: only an executor with PODIUM_DRILLS offers it. Its
        # file (home/effects.jsonl) is under this stack's home, named as the drills'
        # root here rather than inherited (a test run sets its own root for its stacks).
        drills = {"PODIUM_DRILLS": "1", "PODIUM_DRILLS_ROOT": str(home)}
        with Stack(s, executors=2, env=drills) as stack:
            run = asyncio.run(
                _recovery_drive(
                    stack, home / "effects.jsonl", opts.recovery_tasks, opts.recovery_hold_s
                )
            )
            # The baseline: the same broker failing over two bare consumers, no podium.
            advance(f"recovery: the broker's own failover, run {r + 1}/{opts.repeat}")
            bare = asyncio.run(failover_s(stack.bootstrap, int(SESSION_TIMEOUT_S * 1000)))
            run["broker_failover_s"] = bare
            run["ratio_to_broker_failover"] = run["recovered_s"] / bare
            runs.append(run)
        shutil.rmtree(home, ignore_errors=True)
    figures = median_of([{k: float(v) for k, v in r.items()} for r in runs])
    return {
        "runs": runs,
        "median": figures,
        "lost_total": sum(r["lost"] for r in runs),
        "doubled_total": sum(r["effects_doubled"] for r in runs),
        "session_timeout_s": SESSION_TIMEOUT_S,
        "hold_s": opts.recovery_hold_s,
    }

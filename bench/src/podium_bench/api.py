"""The api service's section (issue 17): its reads over real HTTP at 100,000 runs on
SQLite and PostgreSQL, and its projection at the stack's full throughput.

1. Reads. The runs are written straight into the api's database (projecting them
   from the topics would take minutes and measure the projection, which part 2
   does); then the real api process serves them and a load generator in a process
   of its own (``podium_bench.api_load``) times each case beside ``GET /healthz``.
2. The projection. The whole stack runs ``hello`` tasks closed-loop without the
   api, then with it on each database; the api's consumer lag is sampled during the
   load and until it drains, and its CPU is counted per event.

``python -m podium_bench.api [--quick]`` prints the section; ``podium bench --only
api`` writes it into the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from aiokafka import TopicPartition
from pydantic import SecretStr

from podium.client import PodiumClient
from podium.stack import Stack, free_port
from podium_api import tokens
from podium_api.migrations import HISTORY
from podium_api.queries import encode_cursor
from podium_api.state import counters, meta, runs, steps
from podium_bench import api_figures
from podium_bench.drivers import closed_loop, podium_call, warm
from podium_bench.options import PeerOptions
from podium_bench.processes import cpu_seconds, system_processes
from podium_bench.scratch import scratch_broker
from podium_bench.stats import summary
from podium_shared import Settings, Topics
from podium_shared.kafka import ensure_topics, make_admin, make_consumer
from podium_shared.migrations import open_database

TENANTS, WORKFLOWS, SUBJECTS = 20, 5, 1_000
SPACING_S = 0.5  # between two runs' creation: 100,000 runs span about 14 hours
T0 = 1_780_000_000.0
STATUSES = ("completed", "failed", "accepted", "cancelled")
STATUS_WEIGHTS = (0.85, 0.08, 0.05, 0.02)
PAGE = 50
Advance = Callable[[str], None]


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _step(task_id: str, n: int, at: float, rng: random.Random, failed: bool) -> dict[str, Any]:
    ms = rng.uniform(5, 900)
    return {
        "task_id": task_id,
        "step_id": f"step-{n:02d}",
        "status": "failed" if failed else "completed",
        "capability": rng.choice(("llm.chat", "echo", "http.get", "memory.recall")),
        "pool": "default",
        "attempts": 2 if failed else 1,
        "duration_ms": ms,
        "total_duration_ms": ms * (2 if failed else 1),
        "first_at": at + n * 0.01,
        "updated_at": at + n * 0.01 + ms / 1000,
        "output": None if failed else {"value": {"text": "x" * rng.randint(40, 400), "n": n}},
        "error": {"type": "timeout", "message": "the capability timed out"} if failed else None,
        "usage": {"tokens_in": rng.randint(50, 2000), "tokens_out": rng.randint(10, 800)},
        "retry_due_at": None,
        "dlq": None,
    }


def seed(url: str, count: int, big: int, big_steps: int, seed_: int = 17) -> dict[str, Any]:
    """Write ``count`` runs (``big`` of them with ``big_steps`` steps, the others with
    two) and two viewer tokens; returns what the cases need: tokens, ids, cursors."""
    rng = random.Random(seed_)
    engine = open_database(url, HISTORY)
    big_at = set(rng.sample(range(count), big))
    ids: list[str] = []
    started = time.perf_counter()
    try:
        with engine.begin() as conn:
            run_rows: list[dict[str, Any]] = []
            step_rows: list[dict[str, Any]] = []

            def flush() -> None:
                if run_rows:
                    conn.execute(runs.insert(), run_rows)
                if step_rows:
                    conn.execute(steps.insert(), step_rows)
                run_rows.clear()
                step_rows.clear()

            for i in range(count):
                task_id = _hex(rng)
                ids.append(task_id)
                at = T0 + i * SPACING_S
                status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
                done = status != "accepted"
                run_rows.append(
                    {
                        "task_id": task_id,
                        "tenant": f"tenant-{i % TENANTS:02d}",
                        "workflow": f"workflow-{i % WORKFLOWS}",
                        "workflow_version": 1,
                        "subject": f"subject-{rng.randrange(SUBJECTS):04d}",
                        "status": status,
                        "created_at": at,
                        "accepted_at": at + 0.002,
                        "finished_at": at + 1.5 if done else None,
                        "updated_at": at + 1.5 if done else at + 0.002,
                        "input": {"prompt": "y" * rng.randint(20, 300), "i": i},
                        "output": {"value": {"answer": "z" * rng.randint(20, 300)}}
                        if status == "completed"
                        else None,
                        "error": {"type": "step_failed", "message": "step-01 failed"}
                        if status == "failed"
                        else None,
                        "usage": {
                            "tokens_in": rng.randint(100, 5000),
                            "tokens_out": rng.randint(10, 2000),
                            "cost_usd": round(rng.uniform(0, 0.05), 5),
                        },
                        "dlq": None,
                        "cancel_requested_at": at + 1 if status == "cancelled" else None,
                        "seq": i + 1,
                    }
                )
                n_steps = big_steps if i in big_at else 2
                for n in range(n_steps):
                    failed = status == "failed" and n == n_steps - 1
                    step_rows.append(_step(task_id, n, at, rng, failed))
                if len(run_rows) >= 2_000:
                    flush()
            flush()
            conn.execute(counters.update().where(counters.c.name == "runs").values(value=count))
            _, every = tokens.create(conn, "viewer", ["*"], "bench-every-tenant")
            _, one = tokens.create(conn, "viewer", ["tenant-03"], "bench-one-tenant")
        if engine.dialect.name == "postgresql":
            # What autovacuum does within a minute of a bulk load, and what a projection
            # that grew event by event has all along: without statistics the planner
            # guessed two runs for `workflow` and `status` together and sorted 1,600
            # (61 ms). The bench measures the list in that steady state.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("ANALYZE"))
        seed_s = time.perf_counter() - started
    finally:
        engine.dispose()

    def cursor_at(index: int) -> str:  # the cursor a page ending at run ``index`` hands out
        return encode_cursor(T0 + index * SPACING_S, ids[index])

    deep = count - 1 - int(count * 0.9)  # 90% of the way down, newest first
    mine = [i for i in range(count) if i % TENANTS == 3]
    mine_deep = mine[len(mine) - 1 - int(len(mine) * 0.9)]
    middle = T0 + count * SPACING_S / 2
    q = ids[count // 3][5:9]  # four hex digits: found in about one run in 650
    return {
        "seed_s": seed_s,
        "tokens": {"every": every, "one": one},
        "big": [ids[i] for i in sorted(big_at)],
        "small": [ids[i] for i in range(0, count, max(1, count // 100)) if i not in big_at][:100],
        "deep_cursor": cursor_at(deep),
        "one_tenant_deep_cursor": cursor_at(mine_deep),
        "window": (middle, middle + 3_600),
        "q": q,
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def cases(seeded: dict[str, Any], runs_count: int, steps: int) -> list[dict[str, Any]]:
    """The requests of the read run: (name, kind, path, params, token)."""
    lim = {"limit": PAGE}
    since, until = seeded["window"]
    deep = f"{int(runs_count * 0.9):,}"
    l_, r_ = api_figures.LIST, api_figures.RUN_PAGE
    return [
        {"name": "runs list, first page", "kind": l_, "path": "/v1/runs", "params": lim},
        {
            "name": f"runs list, a page {deep} runs deep (cursor)",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"cursor": seeded["deep_cursor"]},
        },
        {
            "name": "runs list, a one-tenant token",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim,
            "token": "one",
        },
        {
            "name": "runs list, a one-tenant token, 90% deep (cursor)",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"cursor": seeded["one_tenant_deep_cursor"]},
            "token": "one",
        },
        {
            "name": "runs list, `status=failed`",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"status": "failed"},
        },
        {
            "name": "runs list, `workflow` and `status`",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"workflow": "workflow-2", "status": "completed"},
        },
        {
            "name": "runs list, `tenant=`",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"tenant": "tenant-07"},
        },
        {
            "name": "runs list, `subject=`",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"subject": "subject-0042"},
        },
        {
            "name": "runs list, one hour (`since`, `until`)",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"since": _iso(since), "until": _iso(until)},
        },
        {
            "name": "runs list, `q=` (4 characters of a task id)",
            "kind": l_,
            "path": "/v1/runs",
            "params": lim | {"q": seeded["q"]},
        },
        {
            "name": f"run page, {steps} steps",
            "kind": r_,
            "paths": [f"/v1/runs/{t}" for t in seeded["big"]],
        },
        {
            "name": "run page, 2 steps",
            "kind": "",
            "paths": [f"/v1/runs/{t}" for t in seeded["small"]],
        },
    ]


@contextlib.contextmanager
def api_process(settings: Settings, url: str) -> Iterator[Stack]:
    """The real api service alone (its projection idle: the topics are empty)."""
    stack = Stack(settings.model_copy(update={"api_database_url": SecretStr(url)}), api=True)
    stack.api_port = free_port()
    try:
        stack.spawn("api")
        stack.wait_ready(90)
        stack.wait_api(60)
        yield stack
    finally:
        stack.stop()


def read_run(settings: Settings, url: str, opts: PeerOptions) -> dict[str, Any]:
    """Seed ``url``, serve it with the api process, time every case from a second process."""
    seeded = seed(url, opts.api_runs, opts.api_big_runs, opts.api_steps)
    plan_cases = cases(seeded, opts.api_runs, opts.api_steps)
    baseline = {"name": "healthz", "path": "/healthz"}
    with api_process(settings, url) as stack:
        plan = {
            "url": stack.api_url,
            "tokens": seeded["tokens"],
            "warmup": opts.api_warmup,
            "requests": opts.api_requests,
            "cases": [baseline, *[c | {"token": c.get("token", "every")} for c in plan_cases]],
        }
        api = psutil.Process(stack.processes[0].proc.pid)
        cpu_before = sum(api.cpu_times()[:2])
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(plan, f)
        try:
            out = subprocess.run(
                [sys.executable, "-m", "podium_bench.api_load", f.name],
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            os.unlink(f.name)
        cpu = sum(api.cpu_times()[:2]) - cpu_before
        if out.returncode != 0:
            raise RuntimeError(f"the load generator failed: {out.stderr[-2000:]}")
    samples: dict[str, list[float]] = json.loads(out.stdout)
    requests = sum(len(v) for v in samples.values())
    warm_requests = opts.api_warmup * len(plan["cases"])
    return {
        "seed_s": seeded["seed_s"],
        "baseline_ms": summary(samples["healthz"]),
        "cases": [
            {"name": c["name"], "kind": c["kind"], "ms": summary(samples[c["name"]])}
            for c in plan_cases
        ],
        "api_cpu_ms_per_request": cpu / (requests + warm_requests) * 1000,
    }


def postgres_admin_url() -> tuple[str | None, str]:
    """A PostgreSQL server's admin URL: PODIUM_TEST_POSTGRES_URL, else what
    infra/postgres/ensure.sh provisions; (None, why) when there is none."""
    url = os.environ.get("PODIUM_TEST_POSTGRES_URL", "")
    if url:
        return url, ""
    script = Path("infra/postgres/ensure.sh")
    if not script.exists():
        return None, "no PODIUM_TEST_POSTGRES_URL and no infra/postgres/ensure.sh here"
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False
    )
    url = done.stdout.strip()
    return (url or None), done.stderr.strip()[-300:] or "ensure.sh found no server"


@contextlib.contextmanager
def postgres_database(admin_url: str, name: str | None = None) -> Iterator[str]:
    """A fresh database on the server (``name``, else a new one), dropped afterwards."""
    name = name or f"podium_bench_api_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class LagProbe:
    """The api group's lag on the four topics it reads: end offsets minus committed
    offsets, summed (a partition the group has not committed counts from 0)."""

    def __init__(self, settings: Settings, group: str, topics: list[str]) -> None:
        self.group = group
        self.topic_names = topics
        self.admin = make_admin(settings, "bench-api-lag")
        self.consumer = make_consumer(settings, group_id=None, client_id="bench-api-lag")
        self.tps: list[TopicPartition] = []

    async def __aenter__(self) -> LagProbe:
        await self.admin.start()
        await self.consumer.start()
        for topic in self.topic_names:
            parts = self.consumer.partitions_for_topic(topic)
            for _ in range(50):
                if parts:
                    break
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic)
            self.tps += [TopicPartition(topic, p) for p in sorted(parts or ())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def ends(self) -> dict[TopicPartition, int]:
        return dict(await self.consumer.end_offsets(self.tps))

    async def lag(self) -> int:
        committed = await self.admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        ends = await self.ends()
        total = 0
        for tp in self.tps:
            at = committed.get(tp)
            offset = at.offset if at is not None and at.offset >= 0 else 0
            total += max(ends[tp] - offset, 0)
        return total


def _epoch(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(sa.select(meta.c.value).where(meta.c.key == "epoch")).scalar_one()
            )
    finally:
        engine.dispose()


async def _loaded(stack: Stack, opts: PeerOptions, api_url: str | None) -> dict[str, Any]:
    topics = Topics(stack.settings.topic_prefix)
    async with PodiumClient(stack.settings) as client:
        call = podium_call(client, "hello")
        await warm(call, opts.warmup)
        procs = system_processes("podium")
        if api_url is None:
            before = cpu_seconds(procs)
            done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
            after = cpu_seconds(procs)
            return {
                "database": None,
                "tasks": done,
                "tasks_per_s": done / elapsed,
                "cpu_s_per_1000_tasks": sum(after[k] - before[k] for k in after if k in before)
                / done
                * 1000,
            }
        group = f"{topics.group('api')}-{_epoch(api_url)}"
        read = [topics.tasks, topics.task_events, topics.step_results, topics.step_failures]
        async with LagProbe(stack.settings, group, read) as probe:
            ends_before = await probe.ends()
            series: list[tuple[float, int]] = []
            started = time.perf_counter()
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    series.append((time.perf_counter() - started, await probe.lag()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), opts.api_lag_every_s)

            sampler = asyncio.create_task(sample())
            before = cpu_seconds(procs)
            done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
            after = cpu_seconds(procs)
            stop.set()
            await sampler
            load_s = time.perf_counter() - started
            at_load_end = await probe.lag()
            series.append((load_s, at_load_end))
            drained_s: float | None = None
            deadline = time.perf_counter() + 120
            while time.perf_counter() < deadline:
                lag = await probe.lag()
                now = time.perf_counter() - started
                series.append((now, lag))
                if lag == 0:
                    drained_s = now - load_s
                    break
                await asyncio.sleep(min(opts.api_lag_every_s, 0.1))
            api_after = cpu_seconds({"api": procs["api"]})["api"]
            ends_after = await probe.ends()
    events = sum(ends_after[tp] - ends_before.get(tp, 0) for tp in ends_after)
    api_cpu = api_after - before["api"]
    rest = sum(after[k] - before[k] for k in after if k in before and k != "api")
    verdict = api_figures.lag_verdict(series, load_s, drained_s, events / elapsed)
    return {
        "tasks": done,
        "tasks_per_s": done / elapsed,
        "events": events,
        "events_per_task": events / done,
        "api_cpu_s": api_cpu,
        "api_cpu_s_per_1000_events": api_cpu / events * 1000,
        "api_share_of_stack_cpu": api_cpu / rest,
        "cpu_s_per_1000_tasks": (rest + api_cpu) / done * 1000,
        "lag": {
            "bounded": verdict.bounded,
            "why": verdict.why,
            "peak": max(lag for _, lag in series),
            "at_load_end": at_load_end,
            "drained_s": drained_s,
            "series": [[round(t, 2), lag] for t, lag in series if t <= load_s],
        },
    }


def projection_run(
    settings: Settings, opts: PeerOptions, database: str | None, url: str | None
) -> dict[str, Any]:
    """One closed-loop run of the whole stack, with the api on ``url`` or without it."""
    home = Path(tempfile.mkdtemp(prefix="podium-bench-api-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"bap{uuid.uuid4().hex[:6]}"}
    )
    if database is not None:
        url = url or f"sqlite:///{home / 'api.db'}"
        settings = settings.model_copy(update={"api_database_url": SecretStr(url)})
    with Stack(settings, api=database is not None) as stack:
        out = asyncio.run(_loaded(stack, opts, url if database is not None else None))
    out["database"] = database
    return out


def api_section(settings: Settings, opts: PeerOptions, advance: Advance) -> dict[str, Any]:
    """The section's figures and its Markdown."""
    load_start = os.getloadavg()
    out: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            "runs": opts.api_runs,
            "big_runs": opts.api_big_runs,
            "steps": opts.api_steps,
            "requests": opts.api_requests,
            "warmup": opts.api_warmup,
            "in_flight": opts.in_flight,
            "throughput_s": opts.throughput_s,
            "lag_every_s": opts.api_lag_every_s,
        },
        "read": {},
        "projection": {"runs": []},
    }
    pg_admin, pg_why = postgres_admin_url() if opts.api_postgres else (None, "--no-api-postgres")
    with scratch_broker(settings, "api", "ba") as scratch:
        asyncio.run(ensure_topics(scratch, Topics(scratch.topic_prefix).declarations(("default",))))
        advance("api reads on SQLite")
        with tempfile.TemporaryDirectory(prefix="podium-bench-api-") as tmp:
            out["read"]["SQLite"] = read_run(scratch, f"sqlite:///{tmp}/api.db", opts)
        advance("api reads on PostgreSQL")
        if pg_admin is None:
            out["read"]["PostgreSQL"] = {"skipped": pg_why}
        else:
            with postgres_database(pg_admin) as url:
                out["read"]["PostgreSQL"] = read_run(scratch, url, opts)
        advance("stack throughput without the api")
        proj = out["projection"]["runs"]
        proj.append(projection_run(scratch, opts, None, None))
        advance("stack throughput with the api on SQLite")
        proj.append(projection_run(scratch, opts, "SQLite", None))
        if pg_admin is not None:
            advance("stack throughput with the api on PostgreSQL")
            with postgres_database(pg_admin) as url:
                proj.append(projection_run(scratch, opts, "PostgreSQL", url))
    out["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    out["targets"] = api_figures.targets(out)
    return out


if __name__ == "__main__":
    from podium.cli_common import load_settings

    quick = PeerOptions.quick() if "--quick" in sys.argv[1:] else PeerOptions()
    figures = api_section(load_settings(), quick, lambda what: print(what, file=sys.stderr))
    print(api_figures.markdown(figures))
    print(json.dumps(figures, indent=2))

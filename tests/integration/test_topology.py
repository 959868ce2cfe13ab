"""The production topology without Docker: docker-compose's layout reproduced with
processes, each with its own PODIUM_HOME as each container has its own volume, so the
replicas share only the broker and PostgreSQL:

    executor x3 (pool default) ──> one PostgreSQL database (the pool's effect ledger,
                                   inbox and outbox)
    router   x2                ──> one PostgreSQL database
    memory, recovery           ──> one PostgreSQL database each

300 tasks of two ``effect.record`` steps each run through it while one executor and one
router are killed with SIGKILL mid-batch. Neither is restarted: the claim is that the
surviving replicas finish the dead one's work from the shared database (its committed
outbox rows, its uncommitted offsets, the effects it made but never reported), which a
restart in the same place would hide. Every task completes, and nothing happens twice,
counted from the effect file, the executor's ledger, the router's runs and the task and
step topics.

It runs on the session's broker: Tansu under ``make test``, Apache Kafka under
``make test-kafka`` (``--broker kafka``).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import sqlalchemy as sa

from podium.client import PodiumClient
from podium.stack import ServiceProcess, Stack
from podium_contracts import (
    Contract,
    StepCompleted,
    StepRequested,
    TaskCompleted,
    TaskSubmitted,
    decode,
)
from podium_executor.state import effects as ledger
from podium_router.state import run_steps, runs
from podium_shared import Topics
from tests.conftest import stack_settings
from tests.support.effects import keys_in
from tests.support.kafka import read_to_end
from tests.support.postgres import scratch_databases
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROLES = ("router", "executor", "memory", "recovery")
TASKS = 300
STEPS = ("first", "second")
# Each step stays in flight this long after its effect: a SIGKILL then catches steps
# whose effect happened and whose result was never recorded, the case that doubles
# effects when replicas do not share the ledger.
HOLD_S = 0.3
CONCURRENCY = 16  # steps in flight per executor replica

E = TypeVar("E", bound=Contract)


def assigned(log: Path) -> list[set[str]]:
    """Every assignment a process logged, in order ("topic[partition]" each)."""
    return [
        set(orjson.loads(line)["partitions"])
        for line in log.read_text(errors="replace").splitlines()
        if '"partitions assigned"' in line
    ]


def taken_over(victim: ServiceProcess, survivors: list[ServiceProcess]) -> Callable[[], bool]:
    """Whether the survivors' latest assignments cover every partition the victim held."""

    def check() -> bool:
        held = (assigned(victim.log_path) or [set()])[-1]
        now = set().union(*((assigned(p.log_path) or [set()])[-1] for p in survivors))
        return bool(held) and held <= now

    return check


def newest_writer(path: Path, replicas: list[ServiceProcess]) -> ServiceProcess:
    """The replica that appended the last line of the effects file (each names its pid)."""
    by_pid = {p.proc.pid: p for p in replicas}
    last = path.read_bytes().rstrip().rsplit(b"\n", 1)[-1]
    return by_pid[orjson.loads(last)["pid"]]


def count_rows(url: str, query: sa.Select[Any]) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


async def events_on(bootstrap: str, topic: str, kind: type[E]) -> list[tuple[str, E]]:
    """Every ``kind`` event on ``topic`` with its ce_id, one per record. The relays
    publish at least once, so an event may be on several records with its one ce_id
    (consumers drop the repeats by it)."""
    out = []
    for r in await read_to_end(bootstrap, topic):
        event = decode(r.value, list(r.headers)).payload
        if isinstance(event, kind):
            out.append((dict(r.headers)["ce_id"].decode(), event))
    return out


def ids_by(events: list[tuple[str, E]], key: Callable[[E], str]) -> dict[str, set[str]]:
    """The distinct ce_ids under each ``key(event)``: more than one is a decision made twice."""
    ids: dict[str, set[str]] = collections.defaultdict(set)
    for ce_id, event in events:
        ids[key(event)].add(ce_id)
    return ids


def doubled(ids: dict[str, set[str]]) -> list[str]:
    return [k for k, v in ids.items() if len(v) > 1]


async def test_replicas_on_postgresql_lose_and_double_nothing_when_an_executor_and_a_router_die(
    kafka_bootstrap: str,
    postgres_url: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    path = tmp_path / "effects.jsonl"
    with scratch_databases(postgres_url, ROLES) as urls:
        settings = stack_settings(
            kafka_bootstrap,
            tmp_path / "home",
            **{f"{role}_database_url": url for role, url in urls.items()},
        )
        # Large bodies go to the blob store, which replicas on many machines must share
        # (an object store); the default, a folder under each PODIUM_HOME, would not be.
        env = {
            "PODIUM_BLOB_URL": str(tmp_path / "blobs"),
            "PODIUM_EXECUTOR_CONCURRENCY": str(CONCURRENCY),
        }
        with Stack(settings, executors=3, routers=2, separate_homes=True, env=env) as stack:
            ready = time.monotonic()
            processes = list(stack.processes)
            executors = [p for p in stack.processes if p.name == "executor"]
            routers = [p for p in stack.processes if p.name == "router"]
            assert (len(executors), len(routers)) == (3, 2)
            assert len({p.home for p in stack.processes}) == len(stack.processes)
            tasks = [
                TaskSubmitted(
                    task_id=f"topo-{uuid.uuid4().hex[:10]}",
                    workflow="topology-effect",
                    input={"path": str(path), "value": i, "hold_s": HOLD_S},
                )
                for i in range(TASKS)
            ]
            steps = TASKS * len(STEPS)

            def effects_at_least(n: int) -> Callable[[], bool]:
                return lambda: sum(keys_in(path).values()) >= n

            async with PodiumClient(stack.settings) as client:
                await asyncio.gather(*(client.submit(t) for t in tasks))
                waiting = asyncio.create_task(client.wait_for([t.task_id for t in tasks], 180))
                await wait_until(effects_at_least(steps // 5), 60, "a fifth of the effects")
                # The replica that made the newest effect: that step holds HOLD_S after
                # it, so the kill surely catches it in flight.
                victim = executors.index(newest_writer(path, executors))
                executors.insert(0, executors.pop(victim))
                stack.kill(executors[0])
                await wait_until(effects_at_least(2 * steps // 5), 60, "two fifths of the effects")
                unfinished = TASKS - len(client.outcomes)
                stack.kill(routers[0])
                outcomes = await waiting
            finished = time.monotonic()
            # The kills came mid-batch and the survivors took the victims' partitions.
            assert (executors[0].proc.returncode, routers[0].proc.returncode) == (-9, -9)
            assert unfinished > 0, "the router was killed after the batch had finished"
            await wait_until(taken_over(executors[0], executors[1:]), 30, "executor takeover")
            await wait_until(taken_over(routers[0], routers[1:]), 30, "router takeover")

        # The survivors stopped on SIGTERM by themselves, within the stack's 20 s.
        stopped = {p.instance: p.proc.returncode for p in processes}
        assert stopped == {
            p.instance: -9 if p in (executors[0], routers[0]) else 0 for p in processes
        }

        # 0 lost: every task completed, every step's effect happened, and every store
        # that keeps them says so.
        assert all(isinstance(o, TaskCompleted) for o in outcomes.values()), [
            o for o in outcomes.values() if not isinstance(o, TaskCompleted)
        ][:3]
        expected_keys = {f"{t.task_id}/{s}" for t in tasks for s in STEPS}
        counts = keys_in(path)
        assert set(counts) == expected_keys
        assert count_rows(urls["executor"], sa.select(sa.func.count()).select_from(ledger)) == steps
        completed_runs = (
            sa.select(sa.func.count()).select_from(runs).where(runs.c.status == "completed")
        )
        assert count_rows(urls["router"], completed_runs) == TASKS

        # 0 doubled: no effect twice, no step dispatched or retried twice, no task
        # completed twice.
        assert set(counts.values()) == {1}, counts.most_common(3)
        retried = sa.select(sa.func.count()).select_from(run_steps).where(run_steps.c.attempts > 1)
        assert count_rows(urls["router"], retried) == 0
        topics = Topics(settings.topic_prefix)
        requested = await events_on(kafka_bootstrap, topics.steps("default"), StepRequested)
        dispatched = ids_by(requested, lambda e: e.idempotency_key)
        assert set(dispatched) == expected_keys
        assert not doubled(dispatched), doubled(dispatched)[:3]
        completed = [
            (ce_id, e)
            for ce_id, e in await events_on(kafka_bootstrap, topics.task_events, TaskCompleted)
            if e.task_id in outcomes
        ]
        ended = ids_by(completed, lambda e: e.task_id)
        assert set(ended) == set(outcomes)
        assert not doubled(ended), doubled(ended)[:3]
        republished = len(completed) - TASKS

        # The kill hit steps in flight: the survivors ran them again, found their effect
        # already made and did not act twice (``appended: false``). Only those: a step
        # whose result the victim had recorded is answered from the shared ledger, so no
        # more steps ran twice than the victim had in flight. With a ledger per replica
        # (SQLite in each home) the steps it had finished but not committed run again
        # too: 34 in one trial. In flight is up to twice the concurrency: the slots, and
        # as many finished steps waiting for the writer, which on PostgreSQL writes on
        # its database thread while the next steps run (25 seen at concurrency 16).
        results = await events_on(kafka_bootstrap, topics.step_results, StepCompleted)
        rerun = len({f"{e.task_id}/{e.step_id}" for _, e in results if not e.output["appended"]})
        assert 0 < rerun <= 2 * CONCURRENCY, rerun

    record_property("start_s", round(ready - started, 1))
    record_property("batch_s", round(finished - ready, 1))
    record_property("republished_outcomes", republished)
    record_property("republished_requests", len(requested) - steps)
    print(
        f"\ntopology: start {ready - started:.1f}s, batch {finished - ready:.1f}s, "
        f"total {time.monotonic() - started:.1f}s; {unfinished} tasks unfinished at the "
        f"router kill; {rerun} steps rerun without a second effect; "
        f"republished (same ce_id): {len(requested) - steps} step requests, "
        f"{republished} outcomes"
    )

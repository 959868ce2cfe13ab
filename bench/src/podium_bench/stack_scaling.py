"""Whole-stack scaling (issue 18, item 4): `hello` throughput, 64 in flight, with n
routers AND n executors for n = 1, 2, 4, on the broker the run uses.

Replicas share what production replicas share: every role's database is one
PostgreSQL database (a server from ``postgres_admin_url``, a fresh database per role
and per point), each process has its own PODIUM_HOME, as in the production topology
(tests/integration/test_topology.py). Without a server only n = 1 is measured, on
SQLite, and the report says so: replicas of a role need a database they share.

Each round measures every n on a fresh stack in turn (1, 2, 4, then again), so
S(n) = T(n)/T(1) and E(n) = S(n)/n compare points of the same round. CPU counts
every process of the system under test: the services, the broker and the
PostgreSQL backends serving the stack's databases (not the server's shared
background processes, which other clients of the same server use too), and the
load generator's own beside it, because all of them share this machine's cores:
``cpu_ceiling`` is the rate at which that CPU per task would fill every core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psutil
from pydantic import SecretStr

from podium.client import PodiumClient
from podium.stack import Stack
from podium_bench.api import postgres_admin_url, postgres_database
from podium_bench.drivers import podium_call, throughput_run, warm
from podium_bench.options import PeerOptions
from podium_bench.processes import system_processes
from podium_bench.scratch import scratch_broker
from podium_bench.stack_figures import curve, markdown, too_few_partitions
from podium_shared import Settings, Topics

ROLES = ("router", "executor", "memory", "recovery")
POOL = "default"  # `hello`'s one `echo` step runs on the default pool


def consumed_topics(topics: Topics) -> list[str]:
    """The topics the replicated roles share out by partition: the router's (tasks,
    step results) and the executors' (their pool's steps)."""
    return [topics.tasks, topics.step_results, topics.steps(POOL)]


def backend_database(cmdline: list[str]) -> str | None:
    """The database a PostgreSQL backend serves, from its process title
    (``postgres: <user> <database> <client> <state>``, padded with empty arguments);
    None for any other process, the server's own background workers included."""
    words = " ".join(cmdline).split()
    if len(words) < 4 or words[0] != "postgres:":
        return None
    client = words[3]  # "127.0.0.1(43210)", or "[local]" on a Unix socket
    if "(" not in client and client != "[local]":
        return None
    return words[2]


def postgres_backends(databases: dict[str, str]) -> dict[str, Any]:
    """The PostgreSQL backend processes connected to ``databases`` (role -> database
    name), labelled "postgresql <role>", "postgresql <role> 2", ..."""
    roles = {name: role for role, name in databases.items()}
    out: dict[str, Any] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            role = roles.get(backend_database(proc.cmdline()) or "")
            if role is None:
                continue
            label, i = f"postgresql {role}", 1
            while label in out:
                i += 1
                label = f"postgresql {role} {i}"
            out[label] = proc
    return out


@contextlib.contextmanager
def role_databases(admin_url: str | None) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database per role (role -> URL), dropped afterwards; none
    without a server."""
    with contextlib.ExitStack() as stack:
        if admin_url is None:
            yield {}
            return
        yield {role: stack.enter_context(postgres_database(admin_url)) for role in ROLES}


async def _loaded(stack: Stack, opts: PeerOptions, databases: dict[str, str]) -> dict[str, Any]:
    async with PodiumClient(stack.settings) as client:
        call = podium_call(client, "hello")
        await warm(call, opts.warmup)
        # Warm-up opened the pools' connections: their backends are there to count.
        procs = {**system_processes("podium"), **postgres_backends(databases)}
        # grouped: "router", "router 2", ... summed as "router" (by role, whatever n).
        return await throughput_run(call, opts, procs, grouped=True)


def measure_point(settings: Settings, n: int, opts: PeerOptions, admin_url: str | None) -> Any:
    """One throughput run with n routers and n executors on a fresh stack (and fresh
    databases), on the section's broker under a topic prefix of its own."""
    topic_prefix = f"{settings.topic_prefix}n{n}{os.urandom(2).hex()}"
    point = settings.model_copy(
        update={"home": settings.home / topic_prefix, "topic_prefix": topic_prefix}
    )
    with role_databases(admin_url) as urls:
        point = point.model_copy(
            update={f"{role}_database_url": SecretStr(url) for role, url in urls.items()}
        )
        env = {
            "PODIUM_BLOB_URL": str(point.home / "blobs"),  # shared, as an object store
            # Slots for every task in flight in each replica: n changes, nothing else.
            "PODIUM_EXECUTOR_CONCURRENCY": str(opts.in_flight),
        }
        stack = Stack(point, executors=n, routers=n, separate_homes=bool(urls), env=env)
        # Up to 10 processes importing at once on a small machine: more than the 60 s default.
        stack.start(timeout_s=180)  # not `with`: its __enter__ starts with the default
        try:
            names = {role: url.rsplit("/", 1)[1] for role, url in urls.items()}
            return asyncio.run(_loaded(stack, opts, names))
        finally:
            stack.stop()


def stack_scaling(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    """The section's figures: the curve, what it ran on, and the n not measured."""
    cores = os.cpu_count() or 1
    admin_url, why = postgres_admin_url()
    measured = opts.stack_replicas if admin_url else opts.stack_replicas[:1]
    topics = Topics("x")
    short = too_few_partitions(
        topics.declarations((POOL,)), consumed_topics(topics), max(opts.stack_replicas)
    )
    if short:
        raise RuntimeError(f"too few partitions for {max(opts.stack_replicas)} replicas: {short}")
    load_start = list(os.getloadavg())
    rounds: list[dict[str, dict[str, Any]]] = []
    with scratch_broker(settings, "stack-scaling", "bss") as scratch:
        for r in range(opts.repeat):
            point: dict[str, dict[str, Any]] = {}
            for n in measured:
                advance(f"whole-stack scaling, n = {n}, run {r + 1}/{opts.repeat}")
                point[str(n)] = measure_point(scratch, n, opts, admin_url)
            rounds.append(point)
    partitions = {
        s.name.removeprefix("x."): s.partitions
        for s in topics.declarations((POOL,))
        if s.name in consumed_topics(topics)
    }
    return {
        "database": "PostgreSQL" if admin_url else "SQLite",
        "not_measured": {
            str(n): f"replicas need a shared database and no PostgreSQL server was found ({why})"
            for n in opts.stack_replicas
            if n not in measured
        },
        "cores": cores,
        "broker_kind": str(settings.broker),
        "in_flight": opts.in_flight,
        "seconds": opts.throughput_s,
        "partitions": partitions,
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "rounds": rounds,
        "curve": curve(rounds, cores),
    }


if __name__ == "__main__":
    # The section alone: python -m podium_bench.stack_scaling [--quick] [--broker kafka]
    # [--repeat N] [--seconds S] [--in-flight N]
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m podium_bench.stack_scaling")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--in-flight", type=int)
    args = parser.parse_args()
    options = PeerOptions.quick() if args.quick else PeerOptions()
    for field, value in (
        ("repeat", args.repeat),
        ("throughput_s", args.seconds),
        ("in_flight", args.in_flight),
    ):
        if value is not None:
            setattr(options, field, value)
    figures = stack_scaling(
        Settings(broker=args.broker),
        options,
        lambda what: print(what, file=sys.stderr, flush=True),
    )
    print(markdown(figures))
    print(json.dumps(figures, indent=2))

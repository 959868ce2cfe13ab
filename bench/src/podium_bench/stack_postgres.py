"""The whole stack on PostgreSQL (issue 18, item 3): router, executor, memory and
recovery each on a database of its own on the server ``infra/postgres/ensure.sh``
provides (``postgres_admin_url``), measured with the same drivers as the SQLite stack
of the same run (open-loop ``hello`` latency, throughput with ``in_flight`` tasks
outstanding), and the CPU of the PostgreSQL processes that serve those databases
counted beside the services'.

That server is the test suite's scratch cluster: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` off, so no commit waits for a disk. The SQLite stack does not fsync
per commit either (WAL, ``synchronous=NORMAL``): the two differ in the round trip to
another process and the server's work, which is what this section measures.

A PostgreSQL server is not a child of the bench: its processes are found from a
backend whose title names one of the run's databases (``postgres: <user> <database>
<host>(<port>) <state>``); the postmaster is that backend's parent. Each backend of
the run's databases counts under its service (``postgresql (router)``, ...), the
postmaster and its background processes (checkpointer, WAL writer, ...) under
``postgresql (server)``; backends of other databases on the same server do not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from pydantic import SecretStr

from podium.client import PodiumClient
from podium.stack import Stack
from podium_bench.api import postgres_admin_url, postgres_database
from podium_bench.drivers import measure_latency, measure_throughput, podium_call
from podium_bench.options import PeerOptions
from podium_bench.processes import system_processes
from podium_shared import Settings

ROLES = ("router", "executor", "memory", "recovery")
SERVER = "postgresql (server)"


def label(title: str, databases: dict[str, str]) -> str | None:
    """Which of the run's figures a PostgreSQL process's title counts under: a backend
    (or autovacuum worker) of a role's database under ``postgresql (<role>)``, the
    postmaster and its background processes under ``postgresql (server)``; None for
    anything serving another database (a backend is ``... <host>(<port>) <state>``)."""
    words = title.split()
    for role, database in databases.items():
        if database in words:
            return f"postgresql ({role})"
    if "autovacuum worker" in title:
        return None
    if any(w.endswith(")") and "(" in w and w.split("(")[-1][:-1].isdigit() for w in words):
        return None  # a connection to another database
    if "[local]" in words:
        return None
    return SERVER


def _title(proc: Any) -> str:
    return " ".join(proc.cmdline())


def postgres_processes(databases: dict[str, str]) -> dict[str, Any]:
    """The server's processes that serve ``databases`` ({role: database name}), by
    ``label`` ("postgresql (router)", "postgresql (router) 2", ...); empty when no
    backend of theirs is connected."""
    names = set(databases.values())
    postmaster = None
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if names & set(_title(proc).split()):
                postmaster = proc.parent()
                break
    if postmaster is None:
        return {}
    out: dict[str, Any] = {}
    for proc in [postmaster, *postmaster.children()]:
        try:
            name = label(_title(proc), databases) if proc is not postmaster else SERVER
        except psutil.Error:
            continue
        if name is None:
            continue
        key, i = name, 1
        while key in out:
            i += 1
            key = f"{name} {i}"
        out[key] = proc
    return out


@contextlib.contextmanager
def service_databases(admin_url: str) -> Iterator[dict[str, str]]:
    """A fresh database per role on the server, dropped afterwards: {role: URL}."""
    tag = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as made:
        yield {
            role: made.enter_context(postgres_database(admin_url, name=f"pb_{tag}_{role}"))
            for role in ROLES
        }


def on_databases(settings: Settings, urls: dict[str, str]) -> Settings:
    """``settings`` with each role's database URL set to ``urls[role]``."""
    return settings.model_copy(
        update={f"{role}_database_url": SecretStr(url) for role, url in urls.items()}
    )


def server_version(admin_url: str) -> str:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


async def _measure(
    settings: Settings, databases: dict[str, str], opts: PeerOptions, advance: Any
) -> dict[str, Any]:
    system = "podium on PostgreSQL"

    def processes() -> dict[str, Any]:
        return {**system_processes("podium"), **postgres_processes(databases)}

    async with PodiumClient(settings) as client:
        call = podium_call(client, "hello")
        latency = await measure_latency(call, system, "hello", opts, advance)
        throughput = await measure_throughput(call, system, opts, advance, processes=processes)
    return {"latency": {"hello": latency}, "throughput": throughput}


def podium_on_postgres(
    settings: Settings, opts: PeerOptions, advance: Callable[[str], None]
) -> dict[str, Any]:
    """The stack with every service on PostgreSQL: ``hello`` latency and throughput,
    PostgreSQL's processes in the CPU; ``{"skipped": why}`` where there is no server."""
    advance("podium on PostgreSQL: stack starting")
    admin, why = postgres_admin_url()
    if admin is None:
        return {"skipped": f"no PostgreSQL server: {why}"}
    home = Path(tempfile.mkdtemp(prefix="podium-bench-pg-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"benchpg{uuid.uuid4().hex[:6]}"}
    )
    load = list(os.getloadavg())
    out: dict[str, Any] = {
        "server": f"PostgreSQL {server_version(admin)}",
        "databases": "one per service on the test suite's cluster (infra/postgres/ensure.sh)",
    }
    with service_databases(admin) as urls:
        databases = {role: url.rsplit("/", 1)[1] for role, url in urls.items()}
        with Stack(on_databases(settings, urls)) as stack:
            out.update(asyncio.run(_measure(stack.settings, databases, opts, advance)))
    shutil.rmtree(home, ignore_errors=True)
    out["load_average"] = {"start": load, "end": list(os.getloadavg())}
    return out


def stages(opts: PeerOptions) -> int:
    """Progress-bar stages: the start, then latency and throughput runs."""
    return 1 + 2 * opts.repeat if opts.postgres else 0

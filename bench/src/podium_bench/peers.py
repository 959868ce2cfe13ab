"""The durable-execution peers beside podium (issue 18): which run (``--peers``), the
processes each is made of, what each persists per step, and the same measurements
for each: open-loop latency of a one-step and a three-step workflow, throughput
with ``in_flight`` tasks outstanding (CPU and peak RSS of all the peer's processes),
and closed-loop latency with one task in flight.

Temporal keeps its own side (``temporal_side``); Restate (``restate_peer``) and DBOS
(``dbos_peer``) run through ``peer_side`` here, each with its service in a worker
process (``Worker``, ``serve_app``) that the load generator calls over HTTP
(``measure_over_http``). A peer that cannot be installed or
started is reported with the reason (``{"unavailable": ...}``), never dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from podium_bench.drivers import (
    Call,
    measure_latency,
    measure_throughput,
    warm,
)
from podium_bench.options import PeerOptions
from podium_bench.stats import median_of, summary

PEERS = ("temporal", "restate", "dbos")

# What each system makes durable for one step, as the bench runs it. Rendered beside the
# figures: a faster system that keeps less is not doing the same work.
PERSISTS: dict[str, str] = {
    "podium": (
        "per step: a step request and a step result on the broker (the embedded Tansu keeps "
        "them in memory: `memory://`), and in the router's and executor's SQLite files the "
        "inbox, run and step rows, the history entry and the outbox (WAL, `synchronous=NORMAL`: "
        "committed, not fsynced per commit)"
    ),
    "temporal": (
        "per activity: scheduled, started and completed events in the workflow's history "
        "(plus a workflow task's events per step); the dev server keeps them in memory "
        "(`start-dev` without `--db-filename`): nothing reaches disk"
    ),
    "restate": (
        "per `ctx.run`: one journal entry (the step's result) appended to the log (Bifrost's "
        "local loglet on RocksDB, WAL fsynced: the server's defaults) before the handler goes "
        "on, then applied to the partition store; plus the invocation's input, status and output"
    ),
    "dbos": (
        "per `@DBOS.step`: one row in `dbos.operation_outputs` (the step's output), committed "
        "before the workflow goes on; plus a `workflow_status` row written at the start (with "
        "the input) and updated at the end. The bench's own PostgreSQL cluster runs with the "
        "server's defaults: `fsync=on`, `synchronous_commit=on` (every commit waits for its "
        "WAL flush)"
    ),
}


class PeerUnavailable(RuntimeError):
    """A peer that cannot be installed or started here; the message says why."""


def parse_peers(text: str) -> tuple[str, ...]:
    """``--peers``: a comma-separated list of peers, ``all`` or ``none``; in PEERS order,
    each once. Raises ValueError naming an unknown peer."""
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not words or words == ["none"]:
        return ()
    if "all" in words:
        if len(words) > 1:
            raise ValueError("`all` stands alone")
        return PEERS
    unknown = sorted(set(words) - set(PEERS))
    if unknown:
        raise ValueError(
            f"unknown peer {', '.join(unknown)}; choose from {', '.join(PEERS)}, all or none"
        )
    return tuple(p for p in PEERS if p in words)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until ``url`` answers 200; PeerUnavailable if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise PeerUnavailable(f"{what} exited with {proc.returncode} while starting")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.1)


def spawn(argv: list[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a peer's process in a session of its own, stdout and stderr appended to
    ``log``, nothing on stdin."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Worker:
    """A peer's worker process, ``python -m <module> worker --port <port> [args]``: the
    peer's service over HTTP (``serve_app``), its output in ``home/worker.log``, ready
    once ``GET /health`` answers."""

    module: str
    home: Path
    what: str  # for errors: "the Restate worker"
    args: tuple[str, ...] = ()
    ready_s: float = 60.0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Worker:
        self.proc = spawn(
            [sys.executable, "-m", self.module, "worker", "--port", str(self.port), *self.args],
            self.home / "worker.log",
        )
        try:
            wait_http(f"{self.uri}/health", self.ready_s, self.proc, self.what)
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)


def worker_parser(module: str, what: str) -> tuple[argparse.ArgumentParser, Any]:
    """``python -m <module> worker --port N``: the parser and the worker's subparser,
    for a peer to add its own options to."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help=what)
    worker.add_argument("--port", type=int, required=True)
    return parser, worker


SignalHook = Callable[[asyncio.AbstractEventLoop, Callable[[], None], int], None]


def _on_signal(loop: asyncio.AbstractEventLoop, hook: Callable[[], None], signum: int) -> None:
    loop.add_signal_handler(signum, hook)


async def serve_app(
    app: Any, port: int, *, on_signal: SignalHook = _on_signal, **config: Any
) -> None:
    """Serve the ASGI ``app`` with hypercorn on loopback ``port`` until SIGTERM or
    SIGINT (a worker process's main); ``on_signal(loop, hook, signum)`` registers the
    stop (an app that takes a signal over has its own way); ``config``: more
    hypercorn settings."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    settings = Config()
    settings.bind = [f"127.0.0.1:{port}"]
    settings.keep_alive_timeout = 3600
    settings.loglevel = "WARNING"
    for key, value in config.items():
        setattr(settings, key, value)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        on_signal(loop, stop.set, sig)
    await serve(app, settings, shutdown_trigger=stop.wait)


async def measure_over_http(
    base_url: str,
    path: str,
    system: str,
    peer: str,
    opts: PeerOptions,
    advance: Any,
    first: Callable[[httpx.AsyncClient], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """``measure_peer`` with each task one ``POST path.format(workflow=...)`` that
    answers once the workflow is done; ``first`` is awaited before the measurements."""
    limits = httpx.Limits(max_connections=opts.in_flight + 8)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        if first is not None:
            await first(client)

        def calls(workflow: str) -> Call:
            async def call(i: int) -> None:
                r = await client.post(path.format(workflow=workflow), json={"i": i}, timeout=60)
                r.raise_for_status()

            return call

        return await measure_peer(calls, system, peer, opts, advance)


def peer_label(name: str, cmdline: list[str]) -> tuple[str, str] | None:
    """(peer, process label) for a process of a peer, from its name and command line;
    None for any other process (podium's, Temporal's, ``runuser``)."""
    cmd = " ".join(cmdline)
    if name == "runuser" or cmd.startswith("runuser"):
        return None
    if "podium_bench.restate_peer worker" in cmd:
        return "restate", "restate worker (Python SDK)"
    if name == "restate-server" or cmd.split(" ", 1)[0].endswith("/restate-server"):
        return "restate", "restate server"
    if "podium_bench.dbos_peer worker" in cmd:
        return "dbos", "DBOS app (Python)"
    if name in ("postgres", "postmaster") or cmd.startswith(("postgres:", "postgres ")):
        return "dbos", "postgresql"
    if "/postgresql/" in cmd and "/bin/postgres" in cmd:
        return "dbos", "postgresql"
    return None


def peer_processes(peer: str) -> dict[str, Any]:
    """This process's children that belong to ``peer``, by label ("postgresql 2", ...)."""
    out: dict[str, Any] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            labelled = peer_label(child.name(), child.cmdline())
        except psutil.Error:
            continue
        if labelled is None or labelled[0] != peer:
            continue
        name, i = labelled[1], 1
        while name in out:
            i += 1
            name = f"{labelled[1]} {i}"
        out[name] = child
    return out


async def closed_one(call: Call, seconds: float) -> list[float]:
    """One task in flight for ``seconds``: the next starts when the last ends; each
    one's latency (ms)."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    return latencies


async def measure_peer(
    calls: Callable[[str], Call], system: str, peer: str, opts: PeerOptions, advance: Any
) -> dict[str, Any]:
    """The same figures as podium's and Temporal's: open-loop latency of ``hello`` and
    ``chain3``, throughput of ``hello`` with ``in_flight`` outstanding (CPU and RSS of
    all the peer's processes, connection processes summed), and one-in-flight latency."""
    out: dict[str, Any] = {}
    out["latency"] = {
        wf: await measure_latency(calls(wf), system, wf, opts, advance)
        for wf in ("hello", "chain3")
    }
    call = calls("hello")
    out["throughput"] = await measure_throughput(
        call, system, opts, advance, processes=lambda: peer_processes(peer)
    )
    out["closed_one"] = await measure_closed_one(call, system, opts, advance)
    return out


async def measure_closed_one(
    call: Call, system: str, opts: PeerOptions, advance: Any
) -> dict[str, Any]:
    """``repeat`` closed-loop runs of ``latency_s`` with one task in flight, each after
    a warm-up: per-run percentiles and their median."""
    closed = []
    for r in range(opts.repeat):
        advance(f"{system} one in flight, run {r + 1}/{opts.repeat}")
        await warm(call, opts.warmup)
        closed.append(summary(await closed_one(call, opts.latency_s)))
    return {"runs": closed, "median": median_of(closed)}


def peer_side(peer: str, opts: PeerOptions, advance: Callable[[str], None]) -> dict[str, Any]:
    """Restate's or DBOS's figures, in a scratch folder of their own; a peer that cannot
    be installed, started or measured gives ``{"unavailable": reason}`` instead."""
    home = Path(tempfile.mkdtemp(prefix=f"podium-bench-{peer}-"))
    load = list(os.getloadavg())
    out: dict[str, Any] = {}
    try:
        if peer == "restate":
            from podium_bench.restate_peer import restate_side

            out = restate_side(home, opts, advance)
        elif peer == "dbos":
            from podium_bench.dbos_peer import dbos_side

            out = dbos_side(home, opts, advance)
        else:
            raise ValueError(f"no side for peer {peer!r}")
    except PeerUnavailable as exc:
        out = {"unavailable": str(exc)}
    except ImportError as exc:
        out = {"unavailable": f"its package is not installed ({exc}): run `make setup`"}
    except Exception as exc:  # a broken run is reported, not a lost bench
        logs = ", ".join(str(p) for p in sorted(home.rglob("*.log")))
        out = {"unavailable": f"failed while measuring: {exc!r} (logs: {logs or 'none'})"}
        return out  # keep the logs for whoever reads the reason
    shutil.rmtree(home, ignore_errors=True)
    out["load_average"] = {"start": load, "end": list(os.getloadavg())}
    return out


def stages(opts: PeerOptions) -> int:
    """Progress-bar stages of one peer: start, latency (2 workflows), throughput, closed."""
    return 1 + opts.repeat * (2 + 1 + 1)

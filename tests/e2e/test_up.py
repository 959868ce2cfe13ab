"""`podium up`: one readiness line, a working stack with its api (URL and operator
token printed), and a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_up_reports_ready_serves_a_task_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PODIUM_KAFKA_BOOTSTRAP"}
    env["PODIUM_HOME"] = str(tmp_path)
    # A free port: another `podium up` on this machine may hold the default.
    env["PODIUM_API_PORT"] = "0"
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
        assert sorted(ready["services"]) == [
            "api",
            "executor-default-0",
            "memory",
            "recovery",
            "router",
        ]
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) == 6  # the broker, four services and the api

        # The api answers at the printed URL, with the printed token and only with it.
        assert ready["api"].startswith("http://127.0.0.1:")
        token = ready["api_token"]
        token_file = Path(ready["api_token_file"])
        assert token_file == tmp_path / "secrets" / "operator.token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=ready["api"], timeout=10) as api:
            assert api.get("/v1/runs", headers=auth).status_code == 200
            assert api.get("/v1/runs").status_code == 401
            assert (
                api.get("/v1/runs", headers={"Authorization": "Bearer pdm_nope"}).status_code == 401
            )

            task_id = f"up-{uuid.uuid4().hex[:8]}"
            submit = subprocess.run(
                [
                    *(sys.executable, "-m", "podium", "submit", "-w", "hello"),
                    *("-i", '{"a": 1}', "--task-id", task_id, "--wait"),
                ],
                env={**env, "PODIUM_KAFKA_BOOTSTRAP": ready["bootstrap"]},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert submit.returncode == 0, submit.stderr
            assert submit.stdout.startswith("completed")

            def listed_completed() -> bool:
                page = api.get("/v1/runs", headers=auth).json()
                return any(
                    r["task_id"] == task_id and r["status"] == "completed" for r in page["items"]
                )

            asyncio.run(wait_until(listed_completed, 30, f"{task_id} completed in /v1/runs"))

        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        assert "Traceback" not in (up.stderr.read() if up.stderr else "")
        deadline = time.monotonic() + 5
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, "children outlived podium up"
            time.sleep(0.1)
        logs = {p.name for p in (tmp_path / "logs").iterdir()}
        assert {"broker.log", "router.log", "executor-default-0.log", "api.log"} <= logs
        assert '"service stopped"' in (tmp_path / "logs" / "router.log").read_text()
    finally:
        if up.poll() is None:
            up.kill()

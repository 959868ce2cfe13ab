"""`PODIUM_EVENT_LOOP=uvloop` (issue 18): every service, the api's HTTP server included,
runs on uvloop and a task goes through the real broker and processes as on asyncio."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskSubmitted
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration


async def test_the_stack_runs_a_task_on_uvloop(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = stack_settings(kafka_bootstrap, tmp_path)
    with Stack(settings, api=True, env={"PODIUM_EVENT_LOOP": "uvloop"}) as stack:
        task = TaskSubmitted(task_id=f"uv-{uuid.uuid4().hex[:8]}", workflow="test-chain")
        async with PodiumClient(stack.settings) as client:
            await client.submit(task)
            outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
        assert isinstance(outcome, TaskCompleted), outcome
        async with httpx.AsyncClient(base_url=stack.api_url) as http:
            assert (await http.get("/healthz")).status_code == 200
        logs = {p.stem: p.read_text() for p in stack.log_dir.glob("*.log")}
    started = {
        name: [line for line in text.splitlines() if "service started" in line]
        for name, text in logs.items()
        if name.split("-")[0] in ("router", "executor", "memory", "recovery", "api")
    }
    assert {n.split("-")[0] for n in started} == {"router", "executor", "memory", "recovery", "api"}
    for name, lines in started.items():
        assert lines and all("uvloop" in line for line in lines), (name, lines)

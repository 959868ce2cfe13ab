"""Mixed versions over the real processes: a writer ahead of the router sends a future
major version (podium.task.submitted.v2); today's router dead-letters it with the reason
and the bytes untouched, and once the router is upgraded to read v2, `podium dlq replay`
brings it back and the task runs. (Additive changes within v1 need no upgrade at all:
tests/unit/test_contract_versions.py runs them through the codec for every contract.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import DLQ_HEADER_PREFIX, TaskCompleted, encode
from podium_shared import Topics, dlq_headers
from tests.conftest import stack_settings
from tests.support.contracts_v2 import TaskSubmittedV2, WorkflowRef
from tests.support.kafka import read_topic
from tests.support.router_db import StatusError, task_status

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UPGRADE = REPO / "tests" / "support" / "upgrade_v2"  # its sitecustomize installs v2


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services and the api: `podium dlq replay` asks the api."""
    home = tmp_path_factory.mktemp("podium-versions")
    with Stack(stack_settings(kafka_bootstrap, home), api=True) as s:
        s.operator_token()
        yield s


def podium_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    s = stack.settings
    env = {
        **os.environ,
        "PODIUM_KAFKA_BOOTSTRAP": s.require_bootstrap(),
        "PODIUM_HOME": str(s.home),
        "PODIUM_TOPIC_PREFIX": s.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def upgrade_router(stack: Stack) -> None:
    """Restart the router as a reader of podium.task.submitted.v2 (the rest stay as they are)."""
    (old,) = [p for p in stack.processes if p.name == "router"]
    stack.kill(old, signal.SIGTERM)
    stack.processes.remove(old)
    stack.env["PYTHONPATH"] = os.pathsep.join([str(UPGRADE), str(REPO)])
    stack.spawn("router")
    stack.wait_ready(120)


async def test_a_future_major_version_is_dead_lettered_and_replayed_after_the_upgrade(
    stack: Stack,
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    task_id = f"v2-{uuid.uuid4().hex[:8]}"
    v2 = TaskSubmittedV2(
        task_id=task_id, workflow=WorkflowRef(name="hello", version=1), input={"text": "v2"}
    )
    value, headers = encode(v2, source="writer-ahead")
    async with PodiumClient(stack.settings) as client:
        await client.submit_raw(value, headers, key=task_id.encode())
        (record,) = await read_topic(stack.bootstrap, topics.dlq(topics.tasks), at_least=1)

    # Dead-lettered by today's router, with the reason, and nothing lost or changed.
    assert record.value == value and record.key == task_id.encode()
    assert [(k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)] == headers
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "unknown_type"
    assert meta["error-type"] == "UnknownContract"
    assert meta["error-message"] == "unknown ce_type 'podium.task.submitted.v2'"
    assert (meta["service"], meta["original-topic"]) == ("router", topics.tasks)
    with pytest.raises(StatusError):  # no run was started for it
        task_status(stack.settings, task_id)

    await asyncio.to_thread(upgrade_router, stack)

    async with PodiumClient(stack.settings) as client:
        replay = await asyncio.to_thread(
            podium_cli, stack, "dlq", "replay", topics.dlq(topics.tasks), "--json"
        )
        assert replay.returncode == 0, replay.stderr
        report = orjson.loads(replay.stdout)
        assert (report["selected"], report["replayed"]) == (1, 1), report
        outcome = (await client.wait_for([task_id], 90))[task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {"text": "v2"}
    assert task_status(stack.settings, task_id)["workflow_version"] == 1

"""The `podium` CLI against the whole stack, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import orjson
import pytest

from podium.stack import Stack

pytestmark = pytest.mark.e2e


def podium(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def stack_env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {
        "PODIUM_KAFKA_BOOTSTRAP": s.require_bootstrap(),
        "PODIUM_HOME": str(s.home),
        "PODIUM_TOPIC_PREFIX": s.topic_prefix,
    }


def test_submit_wait_and_status(stack: Stack) -> None:
    env, task_id = stack_env(stack), f"cli-{uuid.uuid4().hex[:8]}"
    done = podium(
        "submit",
        "-w",
        "hello",
        "-i",
        '{"text": "from the cli"}',
        "--task-id",
        task_id,
        "--wait",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    outcome = orjson.loads(done.stdout)
    assert outcome["status"] == "completed" and outcome["output"] == {"text": "from the cli"}

    status = podium("status", task_id, "--json", env=env)
    assert status.returncode == 0, status.stderr
    info = orjson.loads(status.stdout)
    assert info["status"] == "completed" and info["steps"][0]["capability"] == "echo"
    text = podium("status", task_id, env=env)
    assert text.stdout.startswith(f"{task_id} completed workflow hello v1")


def test_a_failed_task_exits_non_zero_and_says_why(stack: Stack) -> None:
    done = podium("submit", "-w", "test-fails", "--wait", env=stack_env(stack))
    assert done.returncode == 1
    assert "failed" in done.stdout and "unknown_capability" in done.stdout
    assert ".steps.default.v1.dlq" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sumbit"], "No such command 'sumbit'"),
        (["submit", "-w", "hello", "-i", "{oops"], "--input is not valid JSON"),
        (["submit", "-w", "hello", "-i", "[1, 2]"], "--input must be a JSON object"),
        (["submit", "-i", "{}"], "Missing option '--workflow'"),
        (["status", "--status", "bogus"], "--status must be running, completed, failed or"),
        (["history"], "Missing argument 'task_id'"),
        (["up", "--executors", "0"], "--executors"),
    ],
)
def test_bad_arguments_get_one_clear_line_and_a_non_zero_exit(
    args: list[str], message: str
) -> None:
    result = podium(*args, env={"PODIUM_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("podium: error:")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_an_unknown_task_is_one_line(stack: Stack) -> None:
    result = podium("status", "never-submitted", env=stack_env(stack))
    assert result.returncode == 1
    assert result.stderr == "podium: error: no task 'never-submitted'\n"


def test_bad_setting_is_one_line() -> None:
    result = podium("status", "x", env={"PODIUM_TOPIC_PREFIX": "has spaces"})
    assert result.returncode == 2 and result.stderr.startswith("podium: error: bad setting")

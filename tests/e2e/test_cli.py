"""The `podium` CLI against the whole stack, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from podium.stack import Stack, operator_token_file
from podium_shared import EmbeddedBroker
from tests.conftest import stack_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def podium(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # 180 s: on a shared 2-core machine under load 18-24, one CLI start-up took 25 s and a
    # usage error ran past the former 60 s.
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def stack_env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {
        "PODIUM_KAFKA_BOOTSTRAP": s.require_bootstrap(),
        "PODIUM_HOME": str(s.home),
        "PODIUM_TOPIC_PREFIX": s.topic_prefix,
    }


@pytest.fixture(scope="module")
def up_stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """As `podium up` runs it: the api too, its URL and an operator token under
    PODIUM_HOME, where `podium status` finds them."""
    home = tmp_path_factory.mktemp("podium-up")
    with Stack(stack_settings(kafka_bootstrap, home), api=True) as s:
        s.operator_token()
        yield s


async def test_submit_wait_and_status(up_stack: Stack) -> None:
    env, task_id = stack_env(up_stack), f"cli-{uuid.uuid4().hex[:8]}"
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

    # `podium status` asks the api, whose projection hears the outcome after the CLI did.
    token = operator_token_file(up_stack.settings.home).read_text().strip()
    async with httpx.AsyncClient(base_url=up_stack.api_url, timeout=10) as api:

        async def completed() -> bool:
            r = await api.get(f"/v1/runs/{task_id}", headers={"Authorization": f"Bearer {token}"})
            return r.status_code == 200 and r.json()["status"] == "completed"

        await wait_until(completed, 60, f"the api seeing {task_id} completed")
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


def test_a_wait_that_runs_out_exits_3_not_the_failed_tasks_1(stack: Stack) -> None:
    task_id = f"cli-slow-{uuid.uuid4().hex[:8]}"
    args = ["submit", "-w", "test-slow", "-i", '{"seconds": 5}', "--task-id", task_id]
    done = podium(*args, "--wait", "--timeout", "0.5", env=stack_env(stack))
    assert done.returncode == 3, done.stderr
    assert done.stderr == (
        f"podium: error: no outcome for {task_id} within 0.5s (check `podium status {task_id}`)\n"
    )


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


def test_status_of_an_unknown_task_is_one_line(up_stack: Stack) -> None:
    result = podium("status", "never-submitted", env=stack_env(up_stack))
    assert result.returncode == 1
    assert result.stderr == "podium: error: no such task 'never-submitted'\n"


def test_bad_setting_is_one_line() -> None:
    result = podium("status", "x", env={"PODIUM_TOPIC_PREFIX": "has spaces"})
    assert result.returncode == 2 and result.stderr.startswith("podium: error: bad setting")


UNREACHABLE = "cannot connect to the Kafka broker at '{}' (PODIUM_KAFKA_BOOTSTRAP)"
NO_API = "http://127.0.0.1:1"
REFUSED_LOGIN = "refused the login: wrong user name or password? (check PODIUM_SASL_USERNAME"


def one_clear_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("podium: error:")
    assert message in result.stderr
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("args", "bootstrap", "message"),
    [
        (["submit", "-w", "hello"], "127.0.0.1:1", UNREACHABLE.format("127.0.0.1:1")),
        (["submit", "-w", "hello"], "garbage!!", UNREACHABLE.format("garbage!!")),
        (["cancel", "t-1"], "127.0.0.1:1", f"cannot reach the podium api at {NO_API}"),
        (["dlq", "list"], "127.0.0.1:1", f"cannot reach the podium api at {NO_API}"),
        (["cancel", ""], "127.0.0.1:1", "task_id: String should have at least 1 character"),
        (["cancel", "x" * 10_000], "127.0.0.1:1", "task_id: String should have at most 200"),
        (
            ["dlq", "show", "tasks.v1.dlq", "--since", "99999999999999h"],
            "127.0.0.1:1",
            "--since '99999999999999h' reaches back before year 1",
        ),
        (["executor", "--pool", "BAD POOL"], "127.0.0.1:1", "invalid executor setting pool:"),
        (
            ["submit", "-w", "hello", "--task-id", "", "--wait"],
            "127.0.0.1:1",
            "invalid task: task_id: String should have at least 1 character",
        ),
    ],
    ids=[
        "unreachable",
        "garbage-bootstrap",
        "cancel-unreachable-api",
        "dlq-list-unreachable-api",
        "cancel-empty-id",
        "cancel-10k-id",
        "since-overflow",
        "bad-pool",
        "empty-task-id",
    ],
)
def test_hostile_input_gets_one_clear_line_and_exit_2(
    args: list[str], bootstrap: str, message: str
) -> None:
    # cancel and dlq list ask the api: one that is not there.
    result = podium(*args, env={"PODIUM_KAFKA_BOOTSTRAP": bootstrap, "PODIUM_API_URL": NO_API})
    one_clear_line(result, message)


def test_topics_write_outside_the_repository_is_one_line(tmp_path: Path) -> None:
    result = podium("topics", "--write", cwd=tmp_path)
    one_clear_line(result, f"{tmp_path} has no infra/: run it from the repository's root")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def broker_with_logins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded broker that requires SASL/SCRAM, and knows no user: every login fails."""
    log = tmp_path_factory.mktemp("sasl-broker") / "broker.log"
    with EmbeddedBroker(log_path=log, authentication=True) as broker:
        yield broker.bootstrap


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
# A producer's login and (with --wait) a consumer's: dlq list, which read the topics,
# asks the api now.
@pytest.mark.parametrize("args", [["submit", "-w", "hello"], ["submit", "-w", "hello", "--wait"]])
def test_a_refused_scram_login_says_so(
    broker_with_logins: str, mechanism: str, args: list[str]
) -> None:
    env = {
        "PODIUM_KAFKA_BOOTSTRAP": broker_with_logins,
        "PODIUM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PODIUM_SASL_MECHANISM": mechanism,
        "PODIUM_SASL_USERNAME": "operator",
        "PODIUM_SASL_PASSWORD": "not-the-password",
    }
    one_clear_line(podium(*args, env=env), REFUSED_LOGIN)

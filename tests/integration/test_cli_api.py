"""`podium status`, `history`, `trace`, `cancel` and `dlq list/show/replay` go through the
api, over the real broker and the real service processes: as `podium up` leaves it (URL
and operator token under PODIUM_HOME), and from elsewhere with PODIUM_API_URL and
PODIUM_API_TOKEN only; each refusal one line."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from podium.stack import Stack, free_port
from podium_api import tokens
from podium_shared import Topics
from podium_shared.db import connect
from tests.conftest import stack_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """As `podium up` runs it: the api too, its URL and an operator token under PODIUM_HOME."""
    home = tmp_path_factory.mktemp("podium-cli-api")
    with Stack(stack_settings(kafka_bootstrap, home), api=True) as s:
        s.operator_token()
        yield s


def make_token(stack: Stack, role: tokens.Role, *tenants: str) -> str:
    engine = connect(stack.settings.database_url("api"))
    try:
        with engine.begin() as conn:
            _, secret = tokens.create(conn, role, list(tenants))
    finally:
        engine.dispose()
    return secret


def podium(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI with the stack's environment, and ``env`` over it."""
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        env={**stack.child_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def remote(stack: Stack, token: str | None, tmp_path: Path) -> dict[str, str]:
    """A machine of its own: no PODIUM_HOME of the stack's (no router database, no
    files of `podium up`), only the api's URL and maybe a token."""
    env = {"PODIUM_HOME": str(tmp_path / "elsewhere"), "PODIUM_API_URL": stack.api_url}
    if token is not None:
        env["PODIUM_API_TOKEN"] = token
    return env


def one_line(run: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert run.stdout == "", run.stdout
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("podium: error:"), run.stderr
    assert "Traceback" not in run.stderr
    for w in words:
        assert w in run.stderr, run.stderr


async def run_status(stack: Stack, task_id: str) -> str | None:
    token = operator_token(stack)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as api:
        path = f"/v1/runs/{quote(task_id, safe='')}"
        r = await api.get(path, headers={"Authorization": f"Bearer {token}"})
    return r.json()["status"] if r.status_code == 200 else None


def operator_token(stack: Stack) -> str:
    return (stack.settings.home / "secrets" / "operator.token").read_text().strip()


async def test_status_and_cancel_through_the_api_with_roles(stack: Stack, tmp_path: Path) -> None:
    # A task id may hold any character: '/' and '%' must survive the URL (podium_api.segments).
    task_id = f"team/cli-slow/{uuid.uuid4().hex[:8]}%2F"
    sent = podium(stack, "submit", "-w", "test-slow", "-i", '{"seconds": 60}', "--task-id", task_id)
    assert sent.returncode == 0, sent.stderr

    async def accepted() -> bool:
        return await run_status(stack, task_id) == "accepted"

    await wait_until(accepted, 60, f"{task_id} accepted")
    # From another machine, a viewer's token: the state, in the router's words.
    viewer = make_token(stack, "viewer", "default")
    shown = podium(stack, "status", task_id, "--json", env=remote(stack, viewer, tmp_path))
    assert shown.returncode == 0, shown.stderr
    info = orjson.loads(shown.stdout)
    assert (info["task_id"], info["status"], info["workflow"]) == (task_id, "running", "test-slow")
    assert info["input"] == {"seconds": 60}

    # The viewer may not cancel; without a token nobody may; a task of no run is 404.
    refused = podium(stack, "cancel", task_id, env=remote(stack, viewer, tmp_path))
    one_line(refused, 2, "lacks the role", "operator")
    anonymous = podium(stack, "cancel", task_id, env=remote(stack, None, tmp_path))
    one_line(anonymous, 2, stack.api_url, "PODIUM_API_TOKEN")
    assert await run_status(stack, task_id) == "accepted"

    # The local operator, as `podium up` left it: URL and token from PODIUM_HOME.
    cancelled = podium(stack, "cancel", task_id, "--reason", "enough", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert orjson.loads(cancelled.stdout) == {"task_id": task_id, "status": "cancel requested"}

    async def over() -> bool:
        return await run_status(stack, task_id) == "cancelled"

    await wait_until(over, 60, f"{task_id} cancelled")
    listed = podium(stack, "status", "--workflow", "test-slow", "--status", "cancelled")
    assert listed.returncode == 0, listed.stderr
    assert f"{task_id}\tcancelled\ttest-slow v1\t" in listed.stdout


def test_no_such_task_and_no_api_are_one_line(stack: Stack, tmp_path: Path) -> None:
    missing = podium(stack, "status", "never-submitted")
    one_line(missing, 1, "no such task 'never-submitted'")
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = podium(stack, "status", env={"PODIUM_API_URL": nowhere})
    one_line(unreachable, 2, f"cannot reach the podium api at {nowhere}", "PODIUM_API_URL")
    unset = podium(stack, "status", env={"PODIUM_HOME": str(tmp_path)})
    one_line(unset, 2, "no podium api to call", "PODIUM_API_URL", "podium up")


async def test_dlq_list_reads_the_summaries_from_the_api(stack: Stack, tmp_path: Path) -> None:
    task_id = f"cli-fails-{uuid.uuid4().hex[:8]}"
    sent = podium(stack, "submit", "-w", "test-fails", "--task-id", task_id, "--wait")
    assert sent.returncode == 1, sent.stderr
    topics = Topics(stack.settings.topic_prefix)
    dlq = topics.dlq(topics.steps("default"))
    name = dlq.removeprefix(f"{stack.settings.topic_prefix}.")  # as operators type it
    token = make_token(stack, "viewer", "default")

    async def dead_lettered() -> bool:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as api:
            r = await api.get("/v1/dead-letters", headers={"Authorization": f"Bearer {token}"})
        return any(t["topic"] == dlq and t["count"] for t in r.json()["topics"])

    await wait_until(dead_lettered, 90, f"the record in {dlq}")
    env = remote(stack, token, tmp_path)
    listed = podium(stack, "dlq", "list", name, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (summary,) = orjson.loads(listed.stdout)
    assert summary["topic"] == dlq and summary["count"] >= 1
    # Another tenant's token sees the topic, and none of these records.
    stranger = remote(stack, make_token(stack, "viewer", "other"), tmp_path)
    other = podium(stack, "dlq", "list", "--json", env=stranger)
    assert other.returncode == 0, other.stderr
    assert [s["count"] for s in orjson.loads(other.stdout) if s["topic"] == dlq] == [0]


async def test_history_dlq_show_and_replay_from_another_machine(
    stack: Stack, tmp_path: Path
) -> None:
    """A failed task found, explained and replayed with a token and the api's URL only
    (no broker to reach, no PODIUM_HOME of the stack's); a viewer's replay refused."""
    task_id = f"team/cli-dlq/{uuid.uuid4().hex[:8]}"
    sent = podium(stack, "submit", "-w", "test-fails", "--task-id", task_id, "--wait")
    assert sent.returncode == 1, sent.stderr
    topics = Topics(stack.settings.topic_prefix)
    dlq = topics.dlq(topics.steps("default"))
    name = dlq.removeprefix(f"{stack.settings.topic_prefix}.")

    async def failed() -> bool:
        return await run_status(stack, task_id) == "failed"

    await wait_until(failed, 60, f"the api seeing {task_id} failed")
    nowhere = {"PODIUM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    viewer = remote(stack, make_token(stack, "viewer", "default"), tmp_path) | nowhere
    operator = remote(stack, operator_token(stack), tmp_path) | nowhere

    history = podium(stack, "history", task_id, "--json", env=viewer)
    assert history.returncode == 0, history.stderr
    info = orjson.loads(history.stdout)
    events = [e["event"] for e in info["history"]]
    assert info["status"] == "failed" and (events[0], events[-1]) == ("accepted", "failed"), info

    shown = podium(stack, "dlq", "show", name, "--task", task_id, "--json", env=viewer)
    assert shown.returncode == 0, shown.stderr
    (record,) = orjson.loads(shown.stdout)
    assert (record["topic"], record["task_id"]) == (dlq, task_id), record
    stranger = remote(stack, make_token(stack, "viewer", "other"), tmp_path) | nowhere
    hidden = podium(stack, "dlq", "show", name, "--task", task_id, env=stranger)
    assert (hidden.returncode, hidden.stdout) == (0, "no matching records\n"), hidden.stderr

    refused = podium(stack, "dlq", "replay", name, "--task", task_id, env=viewer)
    one_line(refused, 2, "the token lacks the role or tenant for this")
    dry = podium(stack, "dlq", "replay", name, "--task", task_id, "--dry-run", env=operator)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == f"would replay 1 of 1 from {dlq} to their original topics\n"
    unknown = podium(stack, "dlq", "show", "no-such.dlq", env=operator)
    one_line(unknown, 2, "no topic 'no-such.dlq'")

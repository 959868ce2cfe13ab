"""`podium status` and `podium cancel` against the api's real app (uvicorn on loopback,
in a thread, over a SQLite projection): the output the CLI has always printed, and
one line for each refusal. The same over the real stack: tests/integration/test_cli_api.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from podium.cli import app as cli
from podium_api import projection, tokens
from podium_api.app import create_app
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_contracts import StepCompleted, TaskAccepted, TaskSubmitted
from podium_shared import Topics, db
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    with e.begin() as conn:
        projection.task_submitted(
            conn, TaskSubmitted(task_id="t1", workflow="hello", input={"text": "hi"}), 1_000
        )
        projection.task_accepted(
            conn,
            TaskAccepted(
                task_id="t1", workflow="hello", accepted_at=datetime.fromtimestamp(1_001, UTC)
            ),
            1_001,
        )
        step = StepCompleted(
            task_id="t1",
            step_id="echo",
            capability="echo",
            pool="default",
            output={"text": "hi"},
            attempt=1,
            duration_ms=2.5,
        )
        projection.step_completed(conn, step, 1_002)
    yield e
    e.dispose()


@pytest.fixture
def api_url(engine: Engine) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(engine, Commands(Topics("p"))),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline, tick = time.monotonic() + 10, threading.Event()
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        tick.wait(0.01)  # polled: uvicorn sets `started` once it listens
    assert server.started, "the api did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_token(engine: Engine, role: tokens.Role, *tenants: str) -> str:
    with engine.begin() as conn:
        return tokens.create(conn, role, list(tenants))[1]


def podium(tmp_path: Path, url: str, token: str | None, *args: str) -> tuple[int, str, str]:
    env = {"PODIUM_HOME": str(tmp_path / "home"), "PODIUM_API_URL": url}
    if token is not None:
        env["PODIUM_API_TOKEN"] = token
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_status_prints_what_it_always_did(engine: Engine, api_url: str, tmp_path: Path) -> None:
    viewer = make_token(engine, "viewer", "default")
    code, out, err = podium(tmp_path, api_url, viewer, "status", "t1", "--json")
    assert code == 0, err
    info = orjson.loads(out)
    assert (info["task_id"], info["status"], info["workflow"], info["workflow_version"]) == (
        "t1",
        "running",
        "hello",
        1,
    )
    assert info["accepted_at"] == "1970-01-01T00:16:41+00:00"  # as the router table printed it
    assert info["steps"] == [
        {
            "step_id": "echo",
            "capability": "echo",
            "pool": "default",
            "model": None,
            "status": "completed",
            "attempts": 1,
            "duration_ms": 2.5,
            "depends_on": [],
        }
    ]
    code, out, _ = podium(tmp_path, api_url, viewer, "status", "t1")
    assert out == "t1 running workflow hello v1: echo completed (echo@default, attempts 1)\n"
    code, out, _ = podium(tmp_path, api_url, viewer, "status", "--status", "running")
    assert code == 0 and out.startswith("t1\trunning\thello v1\t1970-01-01T00:16:41")
    code, out, _ = podium(tmp_path, api_url, viewer, "status", "--status", "completed")
    assert (code, out) == (0, "no tasks\n")


def test_cancel_needs_an_operator_and_says_so_in_one_line(
    engine: Engine, api_url: str, tmp_path: Path
) -> None:
    viewer = make_token(engine, "viewer", "default")
    code, out, err = podium(tmp_path, api_url, viewer, "cancel", "t1")
    assert (code, out) == (2, "")
    assert err == (
        "podium: error: the token lacks the role or tenant for this: this needs the operator role\n"
    )
    code, _, err = podium(tmp_path, api_url, None, "cancel", "t1")
    assert code == 2 and err.startswith(f"podium: error: the podium api at {api_url} needs a token")
    code, _, err = podium(tmp_path, api_url, "pdm_not-a-token", "status")
    assert code == 2 and "refused the token (unknown or revoked token)" in err
    code, _, err = podium(tmp_path, api_url, viewer, "status", "t2")
    assert (code, err) == (1, "podium: error: no such task 't2'\n")

    operator = make_token(engine, "operator", "default")
    code, out, err = podium(tmp_path, api_url, operator, "cancel", "t1", "--reason", "stuck")
    assert (code, out) == (0, "cancel requested for t1\n"), err
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(db.outbox)).all()
    assert orjson.loads(row.value)["reason"] == "stuck" and row.topic == "p.tasks.v1"

"""Task ids holding '/' and '%' reach their run through the API (podium_api.segments):
the pure path rebuilding, and the routes in-process over a SQLite projection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_api import projection, tokens
from podium_api.app import create_app
from podium_api.migrations import HISTORY
from podium_api.segments import escape, routed_path, unescape
from podium_api.service import Commands
from podium_contracts import TaskSubmitted
from podium_shared import Topics, db
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

ODD_IDS = [
    "orders/2026/7",
    "/leading",
    "trailing/",
    "a//b",
    "50%",
    "literal%2Fescape",
    "%25",
    "cancel/cancel",
    "spaces and ?query#frag",
    "ünï/cödé",
    "x" * 200,
]


@pytest.mark.parametrize("task_id", ODD_IDS)
def test_a_segment_round_trips(task_id: str) -> None:
    assert unescape(escape(task_id)) == task_id
    assert "/" not in escape(task_id)


def test_the_path_splits_where_the_client_split() -> None:
    raw = f"/v1/runs/{quote('a/b', safe='')}/cancel".encode()
    assert routed_path(raw) == "/v1/runs/a%2Fb/cancel"
    assert routed_path(b"/v1/runs/plain") == "/v1/runs/plain"
    assert routed_path(b"/v1/runs/sp%20ace") == "/v1/runs/sp ace"
    # Invalid UTF-8 in an escape is replaced, as the server's own decoding does.
    assert routed_path(b"/v1/runs/%ff") == "/v1/runs/\ufffd"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    yield e
    e.dispose()


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, Commands(Topics("p")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        yield c


@pytest.fixture
def auth(engine: Engine) -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, "operator", ["default"])
    return {"Authorization": f"Bearer {secret}"}


async def test_odd_ids_reach_their_own_run(
    engine: Engine, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    with engine.begin() as conn:
        for i, task_id in enumerate([*ODD_IDS, "orders"]):
            task = TaskSubmitted(task_id=task_id, workflow="wf", tenant="default")
            projection.task_submitted(conn, task, 1_000 + i)
    for task_id in ODD_IDS:
        at = f"/v1/runs/{quote(task_id, safe='')}"
        run = await client.get(at, headers=auth)
        assert run.status_code == 200, (task_id, run.text)
        assert run.json()["task_id"] == task_id
        history = await client.get(f"{at}/history", headers=auth)
        assert (history.status_code, history.json()["task_id"]) == (200, task_id)
    # 'orders/2026/7' unescaped is another path, and no run has it.
    assert (await client.get("/v1/runs/orders/2026/7", headers=auth)).status_code == 404


async def test_a_cancel_of_an_id_ending_in_cancel_is_that_run_s(
    engine: Engine, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    with engine.begin() as conn:
        projection.task_submitted(
            conn, TaskSubmitted(task_id="cancel/cancel", workflow="wf", tenant="default"), 1_000
        )
    r = await client.post(f"/v1/runs/{quote('cancel/cancel', safe='')}/cancel", headers=auth)
    assert (r.status_code, r.json()["task_id"]) == (202, "cancel/cancel")


async def test_submit_answers_a_location_that_leads_to_the_run(
    engine: Engine, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    sent = await client.post("/v1/tasks", headers=auth, json={"task_id": "a/b%c", "workflow": "wf"})
    assert sent.status_code == 202, sent.text
    with engine.begin() as conn:  # the projection sees the submission from the topic
        projection.task_submitted(
            conn, TaskSubmitted(task_id="a/b%c", workflow="wf", tenant="default"), 1_000
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(db.outbox)).scalar_one() == 1
    run = await client.get(sent.headers["Location"], headers=auth)
    assert (run.status_code, run.json()["task_id"]) == (200, "a/b%c")

"""Dead letters through the api, read-only: a summary counts only the records of the
caller's tenants (by the tenant their payload names), and a record whose tenant
cannot be told only for a token of every tenant; the route needs a token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.engine import Engine

from podium_api import tokens
from podium_api.app import create_app
from podium_api.dead_letters import visible_summary
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_api.tokens import Principal
from podium_shared import Topics
from podium_shared.dlq_records import DlqRecord
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit


def record(offset: int, value: bytes, error: str, at: str) -> DlqRecord:
    headers = [
        ("podium-dlq-reason", b"handler_error"),
        ("podium-dlq-error-type", error.encode()),
        ("podium-dlq-time", at.encode()),
    ]
    return DlqRecord("p.tasks.v1.dlq", 0, offset, 0, b"k", value, headers)


RECORDS = [
    record(0, orjson.dumps({"task_id": "a1", "tenant": "acme"}), "boom", "2026-12-01T10:00:00Z"),
    record(1, orjson.dumps({"data": {"tenant": "acme"}}), "bang", "2026-12-01T11:00:00Z"),
    record(2, orjson.dumps({"task_id": "o1", "tenant": "other"}), "boom", "2026-12-01T12:00:00Z"),
    record(3, b"\xff not json", "undecodable", "2026-12-01T13:00:00Z"),
    record(4, orjson.dumps({"task_id": "n1"}), "boom", "2026-12-01T14:00:00Z"),
]


def test_a_tenant_sees_its_records_and_every_tenant_all() -> None:
    assert [r.tenant for r in RECORDS] == ["acme", "acme", "other", None, None]
    acme = visible_summary("p.tasks.v1.dlq", RECORDS, Principal("t", "viewer", ("acme",)))
    assert acme["count"] == 2
    assert (acme["oldest"], acme["newest"]) == (
        "2026-12-01T10:00:00+00:00",
        "2026-12-01T11:00:00+00:00",
    )
    assert {(g["error_type"], g["count"]) for g in acme["groups"]} == {("boom", 1), ("bang", 1)}
    every = visible_summary("p.tasks.v1.dlq", RECORDS, Principal("t", "operator", ("*",)))
    assert every["count"] == 5
    assert every["groups"][0] == {
        "reason": "handler_error",
        "error_class": None,
        "error_type": "boom",
        "count": 3,
    }
    nobody = visible_summary("p.tasks.v1.dlq", RECORDS, Principal("t", "viewer", ("x",)))
    assert (nobody["count"], nobody["oldest"], nobody["groups"]) == (0, None, [])


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    yield e
    e.dispose()


def token(engine: Engine, role: tokens.Role, *tenants: str) -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, role, list(tenants))
    return {"Authorization": f"Bearer {secret}"}


async def test_the_route(engine: Engine) -> None:
    asked: list[Principal] = []

    async def read(who: Principal) -> list[dict[str, Any]]:
        asked.append(who)
        return [visible_summary("p.tasks.v1.dlq", RECORDS, who)]

    app = create_app(engine, Commands(Topics("p")), dead_letters=read)
    bare = create_app(engine, Commands(Topics("p")))
    h = token(engine, "viewer", "acme")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        assert (await c.get("/v1/dead-letters")).status_code == 401
        r = await c.get("/v1/dead-letters", headers=h)
        assert r.status_code == 200, r.text
        (topic,) = r.json()["topics"]
        assert (topic["topic"], topic["count"]) == ("p.tasks.v1.dlq", 2)
        assert topic["oldest"] == "2026-12-01T10:00:00Z"
        assert asked[0].tenants == ("acme",)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(bare), base_url="http://a") as c:
        assert (await c.get("/v1/dead-letters", headers=h)).status_code == 503

"""Dead letters through the API (in-process, over a SQLite or PostgreSQL projection
and a fake DLQ): a topic's records and their replay only of the token's tenants,
replay for operators only, the projection's completed tasks skipped, the target
kept to DLQ sources, and every replay (a dry run too) and cancel in the audit
trail; new dead letters in the live stream in the order of the changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_api import audit, projection, queries, tokens
from podium_api.app import create_app
from podium_api.dead_letters import NoSuchTopic, record_view, replay_target_allowed, resolve
from podium_api.live import Changes, Stream, merge
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_api.state import dead_letter_events
from podium_api.tokens import Principal
from podium_contracts import (
    DlqHeader,
    DlqLocation,
    StepAbandoned,
    StepError,
    TaskCompleted,
    TaskSubmitted,
)
from podium_shared import Topics
from podium_shared.dlq_records import DlqRecord
from podium_shared.dlq_replay import ReplayReport, replay
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

TOPICS = Topics("p")
NOW = datetime(2026, 12, 1, tzinfo=UTC)
DLQ = "p.steps.default.v1.dlq"
DLQS = [DLQ, "p.tasks.v1.dlq"]


def dead(offset: int, task: str, tenant: str | None, error: str = "boom") -> DlqRecord:
    body = {"task_id": task, "step_id": "s1"} | ({"tenant": tenant} if tenant else {})
    headers = [
        ("ce_id", f"ce-{offset}".encode()),
        (DlqHeader.REASON.header, b"step_abandoned"),
        (DlqHeader.ERROR_TYPE.header, error.encode()),
        (DlqHeader.ORIGINAL_TOPIC.header, b"p.steps.default.v1"),
        (DlqHeader.TIME.header, f"2026-12-01T10:00:{offset:02d}Z".encode()),
    ]
    return DlqRecord(DLQ, 0, offset, 0, task.encode(), orjson.dumps(body), headers)


RECORDS = [
    dead(0, "a1", "acme"),
    dead(1, "a2", "acme", "bang"),
    dead(2, "o1", "other"),
    dead(3, "done", "acme"),
]


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Any) -> Any:
        self.sent.append((topic, key))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeDlq:
    """The DLQ as ``DeadLetters`` serves it, and the shared replay over a fake producer."""

    def __init__(self, fail: bool = False) -> None:
        self.producer = FakeProducer()
        self.fail = fail

    async def records(self, name: str) -> tuple[str, list[DlqRecord], list[str]]:
        return resolve(name, DLQS, "p"), list(RECORDS), DLQS

    async def replay(
        self,
        topic: str,
        records: Sequence[DlqRecord],
        *,
        states: dict[str, str],
        to: str | None,
        dry_run: bool,
    ) -> ReplayReport:
        if self.fail and not dry_run:
            raise ConnectionError("broker away")
        producer = None if dry_run else self.producer
        return await replay(producer, topic, records, states=states, to=to, dry_run=dry_run)  # type: ignore[arg-type]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = open_database(database_url, HISTORY)
    with e.begin() as conn:
        for task, tenant in (("a1", "acme"), ("a2", "acme"), ("o1", "other"), ("done", "acme")):
            sub = TaskSubmitted(task_id=task, workflow="wf", tenant=tenant)
            projection.task_submitted(conn, sub, 1_000)
        projection.task_completed(
            conn,
            TaskCompleted(
                task_id="done",
                workflow="wf",
                output={},
                steps=[],
                accepted_at=NOW,
                completed_at=NOW,
            ),
            1_001,
        )
    yield e
    e.dispose()


@pytest.fixture
def fake() -> FakeDlq:
    return FakeDlq()


@pytest.fixture
async def client(engine: Engine, fake: FakeDlq) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, Commands(TOPICS), dlq=fake)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        yield c


def token(engine: Engine, role: tokens.Role, *tenants: str, name: str = "") -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, role, list(tenants), name)
    return {"Authorization": f"Bearer {secret}"}


async def test_records_are_of_the_tokens_tenants_with_filters(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    url = f"/v1/dead-letters/{DLQ}/records"
    assert (await client.get(url)).status_code == 401
    acme = token(engine, "viewer", "acme")
    got = (await client.get(url, headers=acme)).json()
    assert got["topic"] == DLQ
    assert [r["task_id"] for r in got["records"]] == ["a1", "a2", "done"]
    first = got["records"][0]
    assert first["id"] == "ce-0" and first["locator"] == "0:0"
    assert (first["error_type"], first["reason"]) == ("boom", "step_abandoned")
    assert first["value"]["tenant"] == "acme" and first["value_text"] is None
    assert first["headers"]["podium-dlq-original-topic"] == "p.steps.default.v1"
    assert first["time"].startswith("2026-12-01T10:00:00")
    # Unprefixed names work; filters narrow.
    some = await client.get(
        "/v1/dead-letters/steps.default.v1.dlq/records?error_type=bang", headers=acme
    )
    assert [r["task_id"] for r in some.json()["records"]] == ["a2"]
    since = await client.get(url, params={"since": "2026-12-01T10:00:02Z"}, headers=acme)
    assert [r["task_id"] for r in since.json()["records"]] == ["done"]
    assert (await client.get(f"{url}?limit=1", headers=acme)).json()["records"][0]["id"] == "ce-0"
    other = await client.get(url, params={"task_id": "o1"}, headers=acme)
    assert other.json()["records"] == []  # another tenant's, as if absent
    every = await client.get(url, headers=token(engine, "viewer", "*"))
    assert len(every.json()["records"]) == 4
    missing = await client.get("/v1/dead-letters/p.nope.v1.dlq/records", headers=acme)
    assert missing.status_code == 404


def test_a_record_shows_text_and_a_blob_reference_when_not_json() -> None:
    text = DlqRecord(DLQ, 1, 7, 0, None, b"\xffnot json", [])
    view = record_view(text)
    assert view["value"] is None and view["value_text"] == "\ufffdnot json"
    assert view["locator"] == "1:7" and view["id"] == "1:7"
    blob = DlqRecord(
        DLQ,
        0,
        8,
        0,
        None,
        None,
        [
            (DlqHeader.VALUE_REF.header, b"file:///blobs/ab12"),
            (DlqHeader.VALUE_NULL.header, b"true"),
        ],
    )
    view = record_view(blob)
    assert (view["value"], view["value_text"], view["value_ref"]) == (
        None,
        None,
        "file:///blobs/ab12",
    )


async def test_replay_is_for_operators_and_a_dry_run_sends_nothing_but_is_audited(
    client: httpx.AsyncClient, engine: Engine, fake: FakeDlq
) -> None:
    url = f"/v1/dead-letters/{DLQ}/replay"
    for role in ("viewer", "submitter"):
        denied = await client.post(
            url, json={"dry_run": False}, headers=token(engine, role, "acme", name=role)
        )
        assert denied.status_code == 403, role
    assert fake.producer.sent == []
    ops = token(engine, "operator", "acme", name="alice")
    refusals = (await client.get("/v1/audit", headers=ops)).json()["entries"]
    assert [(e["who"], e["target"], e["tenant"], e["detail"]) for e in refusals] == [
        (role, DLQ, "acme", {"result": "refused", "reason": "needs the operator role"})
        for role in ("submitter", "viewer")
    ]
    dry = (await client.post(url, json={"dry_run": True}, headers=ops)).json()
    assert fake.producer.sent == []
    assert dry["dry_run"] is True and dry["selected"] == 3
    assert [r["task_id"] for r in dry["replayed"]] == ["a1", "a2"]
    assert dry["replayed"][0] == {
        "id": "ce-0",
        "offset": "0:0",
        "task_id": "a1",
        "to": "p.steps.default.v1",
    }
    # The projection's completed task is skipped (not the router's database).
    assert [(s["task_id"], s["why"]) for s in dry["skipped"]] == [
        ("done", "task already completed")
    ]
    real = await client.post(url, json={"ids": ["ce-1"], "dry_run": False}, headers=ops)
    assert real.status_code == 200
    assert [r["id"] for r in real.json()["replayed"]] == ["ce-1"]
    assert fake.producer.sent == [("p.steps.default.v1", b"a2")]
    log = (await client.get("/v1/audit", headers=ops)).json()["entries"][:2]
    assert [(e["action"], e["who"], e["target"], e["detail"]["result"]) for e in log] == [
        ("replay", "alice", DLQ, "replayed"),
        ("replay", "alice", DLQ, "dry_run"),
    ]
    assert log[0]["detail"]["ids"] == ["ce-1"] and log[0]["tenant"] == "acme"
    assert log[1]["detail"]["dry_run"] is True and log[1]["detail"]["replayed"] == 2


async def test_a_tenant_replays_only_its_own_records(
    client: httpx.AsyncClient, engine: Engine, fake: FakeDlq
) -> None:
    url = f"/v1/dead-letters/{DLQ}/replay"
    acme = token(engine, "operator", "acme")
    theirs = await client.post(url, json={"ids": ["ce-2"], "dry_run": False}, headers=acme)
    assert theirs.json()["selected"] == 0 and theirs.json()["replayed"] == []
    assert fake.producer.sent == []
    # The other tenant's operator sees no entry of acme's token; acme's sees its own.
    other_log = await client.get("/v1/audit", headers=token(engine, "operator", "other"))
    assert other_log.json()["entries"] == []
    assert len((await client.get("/v1/audit", headers=acme)).json()["entries"]) == 1
    assert (await client.get("/v1/audit", headers=token(engine, "viewer", "*"))).status_code == 403


async def test_a_replay_goes_only_to_a_dlq_source_and_a_failure_is_audited(
    engine: Engine,
) -> None:
    app = create_app(engine, Commands(TOPICS), dlq=FakeDlq(fail=True))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        ops = token(engine, "operator", "*")
        url = f"/v1/dead-letters/{DLQ}/replay"
        elsewhere = await client.post(url, json={"to": "p.egress.v1"}, headers=ops)
        assert elsewhere.status_code == 400
        broken = await client.post(url, json={"dry_run": False}, headers=ops)
        assert broken.status_code == 502
        log = (await client.get("/v1/audit", headers=ops)).json()["entries"]
    assert [e["detail"]["result"] for e in log] == ["error"]
    assert "broker away" in log[0]["detail"]["error"]
    assert replay_target_allowed("p.tasks.v1", DLQS)
    assert replay_target_allowed(None, DLQS)
    assert not replay_target_allowed("p.task-events.v1", DLQS)


async def test_every_cancel_is_audited_with_its_result(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    viewer = token(engine, "viewer", "acme", name="eve")
    assert (await client.post("/v1/runs/a1/cancel", headers=viewer)).status_code == 403
    ops = token(engine, "operator", "acme", name="bob")
    assert (await client.post("/v1/runs/a1/cancel", headers=ops)).status_code == 202
    assert (await client.post("/v1/runs/done/cancel", headers=ops)).status_code == 409
    assert (await client.post("/v1/runs/o1/cancel", headers=ops)).status_code == 404
    log = (await client.get("/v1/audit", headers=ops)).json()["entries"]
    assert [(e["target"], e["tenant"], e["detail"]["result"]) for e in log] == [
        ("o1", None, "not_found"),  # another tenant's run: its tenant is not told
        ("done", "acme", "finished"),
        ("a1", "acme", "published"),
        ("a1", "acme", "refused"),
    ]
    assert [e["who"] for e in log] == ["bob", "bob", "bob", "eve"]
    other = await client.get("/v1/audit", headers=token(engine, "operator", "other"))
    assert other.json()["entries"] == []


def test_audit_entries_name_one_tenant_only_when_all_agree() -> None:
    assert audit.only_tenant(["a", "a"]) == "a"
    assert audit.only_tenant(["a", "b"]) is None
    assert audit.only_tenant([]) is None
    assert audit.only_tenant([None]) is None


def abandoned(task: str, record_id: str) -> StepAbandoned:
    return StepAbandoned(
        task_id=task,
        step_id="s1",
        attempts=3,
        error=StepError(type="boom", message="no"),
        dlq=DlqLocation(topic=DLQ, record_id=record_id),
    )


def test_a_dead_letter_is_a_change_once_and_visible_to_its_runs_tenant(engine: Engine) -> None:
    with engine.begin() as conn:
        before = queries.latest_change(conn)
        projection.step_abandoned(conn, abandoned("a1", "r1"), 2_000)
        projection.step_abandoned(conn, abandoned("a1", "r1"), 2_000)  # redelivered
        projection.step_abandoned(conn, abandoned("ghost", "r2"), 2_001)  # run not yet known
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dead_letter_events)).all()
        assert len(rows) == 2
        assert queries.latest_change(conn) > before
        f = queries.ChangeFilter()
        mine = queries.dead_letters_after(conn, Principal("t", "viewer", ("acme",)), f, 0, limit=9)
        assert [(r["record_id"], r["tenant"]) for r in mine] == [("r1", "acme")]
        theirs = queries.dead_letters_after(
            conn, Principal("t", "viewer", ("other",)), f, 0, limit=9
        )
        assert theirs == []
        every = queries.dead_letters_after(conn, Principal("t", "viewer", ("*",)), f, 0, limit=9)
        assert [r["record_id"] for r in every] == ["r1", "r2"]
        later = queries.dead_letters_after(
            conn, Principal("t", "viewer", ("*",)), f, 10**9, limit=9
        )
        assert later == []


def test_runs_and_dead_letters_merge_in_order_up_to_a_full_batch() -> None:
    runs = [{"seq": 1}, {"seq": 4}]
    dead = [{"seq": 2}, {"seq": 3}]
    events, more = merge(runs, dead, batch=2)  # type: ignore[arg-type]
    # Both reads were full: only up to the earlier end (3) is complete; 4 comes next.
    assert [(seq, kind) for seq, kind, _ in events] == [
        (1, "run"),
        (2, "dead_letter"),
        (3, "dead_letter"),
    ]
    assert more
    events, more = merge(runs, dead[:1], batch=3)  # type: ignore[arg-type]
    assert [seq for seq, _, _ in events] == [1, 2, 4] and not more


async def test_shared_replay_needs_a_producer_unless_dry() -> None:
    report = await replay(None, DLQ, RECORDS[:1], states={}, dry_run=True)
    assert [r["id"] for r in report.replayed] == ["ce-0"]
    with pytest.raises(ValueError, match="producer"):
        await replay(None, DLQ, RECORDS[:1], states={})
    with pytest.raises(NoSuchTopic):
        resolve("nope", DLQS, "p")


async def test_the_live_stream_sends_a_dead_letter_after_its_runs_change(engine: Engine) -> None:
    changes = Changes()
    stream = Stream(engine, changes, render=lambda row: row["task_id"], heartbeat_s=30)
    with engine.begin() as conn:
        after = queries.latest_change(conn)
        projection.step_abandoned(conn, abandoned("a1", "r9"), 2_000)
        projection.step_abandoned(conn, abandoned("o1", "r8"), 2_001)  # another tenant's
    events = stream.events(Principal("t", "viewer", ("acme",)), queries.ChangeFilter(), after)
    assert await anext(events) == b"retry: 2000\n\n"
    dead = (await asyncio.wait_for(anext(events), 10)).decode()
    changes.close()
    rest = [chunk async for chunk in events]  # a closed stream ends: B's is not in it
    assert rest == []
    assert dead.startswith(f"id: {after + 1}\nevent: dead_letter\n")
    data = orjson.loads(dead.split("data: ", 1)[1])
    assert (data["id"], data["task_id"], data["tenant"], data["topic"]) == ("r9", "a1", "acme", DLQ)
    assert data["error"]["type"] == "boom"

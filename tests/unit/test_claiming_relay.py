"""Replicas of one role sharing a database: each row of the outbox leaves once.

The router's, memory's and recovery's databases carry ``outbox_claims`` from
revision 0004, and ``run_service`` gives every service on PostgreSQL a claiming
relay (the executor one everywhere): two router replicas on one database once sent
89 to 380 duplicates per 600 step requests with plain relays."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from podium_router.migrations import HISTORY as ROUTER_HISTORY
from podium_shared import OutboxRelay, ServiceSpec, Settings, make_engine
from podium_shared.claiming import ClaimingRelay
from podium_shared.db import outbox, outbox_claims
from podium_shared.migrations import open_database
from podium_shared.outbox import OutgoingMessage, write_outbox
from podium_shared.runtime import make_relay
from tests.support.clock import FakeClock

pytestmark = pytest.mark.unit

ROWS = 600
COMMITS = 60


class Sender:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[Any]:
        self.sent.append(value)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def spec(
    engine: sa.Engine, *, claim_outbox: bool = False, lease_s: float | None = None
) -> ServiceSpec:
    return ServiceSpec(
        name="router",
        group="g",
        topics=[],
        handler=None,  # type: ignore[arg-type]
        engine=engine,
        claim_outbox=claim_outbox,
        outbox_lease_s=lease_s,
    )


def test_two_router_replicas_on_one_database_never_send_a_row_twice(database_url: str) -> None:
    """Two relays, each on its own thread and event loop as in two processes, drain
    an outbox a third thread keeps writing to, as the router's replicas do."""
    engine = open_database(database_url, ROUTER_HISTORY)
    writing = threading.Event()
    writing.set()
    senders = [Sender(), Sender()]
    errors: list[BaseException] = []

    def write() -> None:
        per_commit = ROWS // COMMITS
        for c in range(COMMITS):
            with engine.begin() as conn:
                write_outbox(
                    conn,
                    [
                        OutgoingMessage("t.steps", b"k", str(c * per_commit + i).encode(), [])
                        for i in range(per_commit)
                    ],
                )
        writing.clear()

    def relay(sender: Sender, owner: str) -> None:
        async def drain() -> None:
            relay = ClaimingRelay(engine, sender, owner=owner, batch=7)
            while True:
                # Read before the publish: once the writer is done, a publish that
                # finds nothing to claim means every row has been claimed.
                still_writing = writing.is_set()
                if not await relay.publish_pending() and not still_writing:
                    return
                await asyncio.sleep(0)

        try:
            asyncio.run(drain())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=relay, args=(s, f"router-{i}")) for i, s in enumerate(senders)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        sent = senders[0].sent + senders[1].sent
        assert len(sent) == ROWS  # none twice
        assert sorted(sent) == sorted(str(i).encode() for i in range(ROWS))  # none lost
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 0
            left = conn.execute(sa.select(sa.func.count()).select_from(outbox_claims))
            assert left.scalar_one() == 0
    finally:
        engine.dispose()


def test_a_shared_database_gets_a_claiming_relay_and_a_local_file_the_plain_one(
    database_url: str, tmp_path: Path
) -> None:
    engine = open_database(database_url, ROUTER_HISTORY)
    settings = Settings(home=tmp_path, outbox_lease_s=3.0)
    try:
        relay = make_relay(settings, spec(engine), Sender(), "router-41")
        if engine.dialect.name == "postgresql":
            assert isinstance(relay, ClaimingRelay)
            assert (relay.owner, relay.lease_s) == ("router-41", 3.0)
        else:
            assert type(relay) is OutboxRelay
        # The executor claims on SQLite too (`podium up --executors N`), with its own lease.
        executor = make_relay(
            settings, spec(engine, claim_outbox=True, lease_s=7.0), Sender(), "executor-gpu-9"
        )
        assert isinstance(executor, ClaimingRelay)
        assert (executor.owner, executor.lease_s) == ("executor-gpu-9", 7.0)
    finally:
        engine.dispose()


def test_the_lease_is_a_shared_setting_not_a_deprecated_executor_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from podium_executor.settings import ExecutorSettings, deprecated_variables

    monkeypatch.setenv("PODIUM_OUTBOX_LEASE_S", "4")
    assert Settings().outbox_lease_s == 4.0
    assert ExecutorSettings().outbox_lease_s == 4.0  # the executor follows it...
    assert deprecated_variables({"PODIUM_OUTBOX_LEASE_S": "4"}) == []
    monkeypatch.setenv("PODIUM_EXECUTOR_OUTBOX_LEASE_S", "6")
    assert ExecutorSettings().outbox_lease_s == 6.0  # ...unless its own name says otherwise


def add_rows(engine: sa.Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            outbox.insert(),
            [
                {
                    "topic": "t",
                    "key": b"k",
                    "value": str(i).encode(),
                    "headers": [],
                    "created_at": 0,
                }
                for i in range(n)
            ],
        )


async def test_relays_sharing_a_database_publish_each_row_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'executor.db'}")
    add_rows(engine, 50)
    senders = [Sender(), Sender()]
    relays = [ClaimingRelay(engine, s, owner=f"r{i}", batch=7) for i, s in enumerate(senders)]

    async def drain(relay: ClaimingRelay) -> None:
        while await relay.publish_pending():
            await asyncio.sleep(0)

    await asyncio.gather(*(drain(r) for r in relays))
    sent = senders[0].sent + senders[1].sent
    assert sorted(sent) == sorted(str(i).encode() for i in range(50))  # each exactly once
    assert all(s.sent for s in senders)  # both took a share
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox_claims)).scalar_one() == 0


async def test_a_dead_relays_claims_expire_and_its_rows_are_published(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'executor.db'}")
    add_rows(engine, 3)
    clock = FakeClock()
    dead = ClaimingRelay(engine, Sender(), owner="dead", lease_s=0.2, clock=clock)
    assert len(dead.claim()) == 3  # claimed, then killed before sending
    alive_sender = Sender()
    alive = ClaimingRelay(engine, alive_sender, owner="alive", lease_s=0.2, clock=clock)
    clock.advance(0.15)
    assert await alive.publish_pending() == 0  # still leased
    clock.advance(0.1)
    assert await alive.publish_pending() == 3
    assert await dead.publish_pending() == 0  # its lease is gone: it deletes nothing
    assert len(alive_sender.sent) == 3

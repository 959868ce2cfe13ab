"""One database per role: which replicas may process beside which (``decide``),
how a replica names its database in its client id, and how the guard holds the
consume loop's fetching until the check of an assignment allows it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaConnectionError,
)

from podium_shared import metrics
from podium_shared.settings import Settings
from podium_shared.shared_state import (
    SHARED,
    Allowed,
    LocalState,
    Member,
    Refused,
    SharedStateGuard,
    UnsharedState,
    decide,
    token_in,
)

pytestmark = pytest.mark.unit

GROUP = "podium-executor-default"
TP = TopicPartition("podium.steps.default.v1", 0)


def file_state(tmp_path: Path, name: str = "executor-default.db", host: str = "a") -> LocalState:
    return LocalState.of(f"sqlite:///{tmp_path / name}", host=host)


def member_of(state: LocalState, pid: int = 100, host: str = "") -> Member:
    return Member(
        f"{state.client_id(f'executor-default-{pid}')}-0b6f5c1e-1d2a-4c3b-9e8f-7a6b5c4d3e2f",
        state.client_id(f"executor-default-{pid}"),
        host,
    )


# --- how a replica names its database ---------------------------------------


def test_a_database_server_is_shared_and_its_password_is_not_shown() -> None:
    state = LocalState.of("postgresql+psycopg://podium:secret@db:5432/executor_default")
    assert state.token == SHARED
    assert "secret" not in state.where and "db:5432/executor_default" in state.where


def test_one_file_on_one_host_is_one_token(tmp_path: Path) -> None:
    one = file_state(tmp_path)
    assert one.token.startswith("db") and len(one.token) == 10
    assert file_state(tmp_path) == one
    # The same file named through a symlinked folder is the same file.
    (tmp_path / "link").symlink_to(tmp_path)
    assert LocalState.of(f"sqlite:///{tmp_path / 'link' / 'executor-default.db'}", host="a") == one


def test_another_file_or_another_host_is_another_token(tmp_path: Path) -> None:
    one = file_state(tmp_path)
    assert file_state(tmp_path, name="other.db").token != one.token
    # The same path in another container or on another machine is another file.
    assert file_state(tmp_path, host="b").token != one.token


def test_an_in_memory_database_is_never_shared() -> None:
    state = LocalState.of("sqlite://", host="a")
    assert state.token != SHARED and state.token.startswith("db")
    assert "in-memory" in state.where


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("podium-executor-default-4242-db1a2b3c4d", "db1a2b3c4d"),
        ("podium-router-17-pg", "pg"),
        # A member id is the client id and a UUID, on Kafka and on Tansu.
        ("podium-router-17-pg-9a54fea0-40d2-4d09-bea0-1ba0844c1ebb", "pg"),
        (
            "podium-executor-default-4242-db1a2b3c4d-0b6f5c1e-1d2a-4c3b-9e8f-7a6b5c4d3e2f",
            "db1a2b3c4d",
        ),
        # A pool named "pg" is not the token: the last one is.
        ("podium-executor-pg-4242-db1a2b3c4d", "db1a2b3c4d"),
        ("podium-executor-default-4242", None),  # an older podium
        ("rdkafka-9a54fea0-40d2-4d09-bea0-1ba0844c1ebb", None),
    ],
)
def test_the_token_is_read_from_a_client_or_member_id(name: str, token: str | None) -> None:
    assert token_in(name) == token


def test_a_tansu_member_without_client_id_shows_its_token_in_the_member_id() -> None:
    member = Member("podium-executor-default-9-db0123abcd-9a54fea0-40d2-4d09-bea0-1ba0844c1ebb")
    assert member.token == "db0123abcd"
    assert member.name == "podium-executor-default-9-db0123abcd"


# --- decide ------------------------------------------------------------------


def test_alone_on_a_sqlite_file_is_allowed(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    assert decide([member_of(own)], own, role="executor", group=GROUP) == Allowed()


def test_replicas_on_one_file_of_one_host_are_allowed(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    members = [member_of(own, pid) for pid in (100, 101, 102)]
    assert decide(members, own, role="executor", group=GROUP) == Allowed()


def test_replicas_on_a_database_server_are_allowed_whoever_else_is_there(tmp_path: Path) -> None:
    own = LocalState.of("postgresql+psycopg://db/executor_default")
    members = [member_of(own), member_of(file_state(tmp_path), 7), Member("mystery-1")]
    assert decide(members, own, role="executor", group=GROUP) == Allowed()


def test_a_replica_beside_another_file_refuses_and_names_the_setting(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    other = file_state(tmp_path, host="b")
    decision = decide(
        [member_of(own), member_of(other, 7, host="/10.0.0.2")], own, role="executor", group=GROUP
    )
    assert isinstance(decision, Refused)
    reason = decision.reason
    assert "PODIUM_EXECUTOR_DATABASE_URL" in reason and "one PostgreSQL database" in reason
    assert GROUP in reason and str(tmp_path / "executor-default.db") in reason
    assert "podium-executor-default-7-" in reason and "10.0.0.2" in reason
    assert "PODIUM_ALLOW_UNSHARED_SQLITE" in reason
    assert "\n" not in reason  # one line


def test_a_sqlite_replica_beside_a_server_replica_refuses(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    server = LocalState.of("postgresql+psycopg://db/router")
    decision = decide([member_of(own), member_of(server, 7)], own, role="router", group="g")
    assert isinstance(decision, Refused) and "PODIUM_ROUTER_DATABASE_URL" in decision.reason


def test_a_member_that_cannot_show_its_database_counts_as_another(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    decision = decide(
        [member_of(own), Member("podium-executor-default-9-0b6f5c1e-1d2a-4c3b-9e8f-7a6b5c4d3e2f")],
        own,
        role="executor",
        group=GROUP,
    )
    assert isinstance(decision, Refused)


def test_a_long_list_of_others_is_cut_short(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    others = [member_of(file_state(tmp_path, host=f"h{i}"), i) for i in range(5)]
    decision = decide([member_of(own), *others], own, role="executor", group=GROUP)
    assert isinstance(decision, Refused)
    assert "5 other executor replica(s)" in decision.reason and "and 2 more" in decision.reason


def test_the_escape_hatch_is_a_setting_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().allow_unshared_sqlite is False
    monkeypatch.setenv("PODIUM_ALLOW_UNSHARED_SQLITE", "true")
    assert Settings().allow_unshared_sqlite is True


# --- the guard ---------------------------------------------------------------


class Inner(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned: list[set[TopicPartition]] = []
        self.revoked: list[set[TopicPartition]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(assigned)


class Group:
    """What the broker would describe: the members, or an error to raise."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.errors: list[Exception] = []
        self.calls = 0

    async def __call__(self) -> list[Member]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.members


class Consumer:
    """A consumer whose fetch returns the records queued for it."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[dict[TopicPartition, list[Any]]] = asyncio.Queue()

    async def getmany(
        self, *_: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        return await self.batches.get()

    def assignment(self) -> set[TopicPartition]:
        return {TP}


def guard_of(own: LocalState, group: Group, **options: Any) -> SharedStateGuard:
    return SharedStateGuard(
        role="executor", group=GROUP, own=own, describe=group, linger_s=0, retry_s=0, **options
    )


async def ended(guard: SharedStateGuard) -> None:
    """Wait for the guard's task to end the service; raise what it ends it with."""
    await asyncio.wait_for(guard.watch(), 1)
    guard.raise_if_ended()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_fetching_waits_for_the_first_check_and_then_flows(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    guard = guard_of(own, Group([member_of(own)]))
    consumer = Consumer()
    gated = guard.gated(consumer)  # type: ignore[arg-type]
    inner = Inner()
    listener = guard.listening(inner)
    await consumer.batches.put({TP: ["record"]})
    fetch = asyncio.create_task(gated.getmany(timeout_ms=100))
    await settle()
    assert not fetch.done() and consumer.batches.qsize() == 1  # not even fetched
    await listener.on_partitions_assigned({TP})
    assert await asyncio.wait_for(fetch, 1) == {TP: ["record"]}
    assert inner.assigned == [{TP}]  # readiness comes with the allowed check
    assert gated.assignment() == {TP}  # everything else is the consumer's own


async def test_a_record_fetched_across_a_rebalance_waits_for_the_new_check(
    tmp_path: Path,
) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own)])
    guard = guard_of(own, group)
    consumer = Consumer()
    gated = guard.gated(consumer)  # type: ignore[arg-type]
    inner = Inner()
    listener = guard.listening(inner)
    await listener.on_partitions_assigned({TP})
    await settle()
    assert guard.open
    fetch = asyncio.create_task(gated.getmany(timeout_ms=100))  # began while open
    await settle()
    await listener.on_partitions_revoked({TP})
    assert inner.revoked == [{TP}] and not guard.open
    group.members = [member_of(own), member_of(file_state(tmp_path, host="b"), 7)]
    await consumer.batches.put({TP: ["record of the new assignment"]})
    await listener.on_partitions_assigned({TP})
    with pytest.raises(UnsharedState, match="PODIUM_EXECUTOR_DATABASE_URL"):
        await ended(guard)
    assert not fetch.done()  # the record is never handed out
    assert inner.assigned == [{TP}]  # the refused assignment never became ready
    fetch.cancel()


async def test_a_second_replica_joining_later_makes_the_first_refuse(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own)])
    guard = guard_of(own, group)
    listener = guard.listening(Inner())
    await listener.on_partitions_assigned({TP})
    await settle()
    assert guard.open
    group.members.append(member_of(file_state(tmp_path, name="b.db"), 7))
    await listener.on_partitions_revoked({TP})
    await listener.on_partitions_assigned({TP})
    with pytest.raises(UnsharedState):
        await ended(guard)
    assert not guard.open


async def test_a_refused_replica_stays_in_its_group_for_the_linger(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own), member_of(file_state(tmp_path, host="b"), 7)])
    guard = SharedStateGuard(role="executor", group=GROUP, own=own, describe=group, linger_s=0.3)
    await guard.listening(Inner()).on_partitions_assigned({TP})
    watch = asyncio.create_task(guard.watch())
    await asyncio.sleep(0.15)
    assert not watch.done()
    await asyncio.wait_for(watch, 1)  # it ends the service, which then leaves the group
    with pytest.raises(UnsharedState):
        guard.raise_if_ended()


async def test_the_escape_hatch_warns_and_processes(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own), member_of(file_state(tmp_path, host="b"), 7)])
    guard = guard_of(own, group, allow_unshared=True)
    inner = Inner()
    await guard.listening(inner).on_partitions_assigned({TP})
    await settle()
    assert guard.open and inner.assigned == [{TP}]
    watch = asyncio.create_task(guard.watch())
    await asyncio.sleep(0.05)
    assert not watch.done()  # the service runs on
    guard.raise_if_ended()
    watch.cancel()


async def test_a_replica_on_a_server_never_asks_the_broker() -> None:
    group = Group([])
    guard = guard_of(LocalState.of("postgresql+psycopg://db/x"), group)
    await guard.listening(Inner()).on_partitions_assigned({TP})
    await settle()
    assert guard.open and group.calls == 0


async def test_a_broker_error_is_asked_again_then_ends_the_service(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own)])
    group.errors = [KafkaConnectionError("away")]
    guard = guard_of(own, group, attempts=3)
    await guard.listening(Inner()).on_partitions_assigned({TP})
    await settle()
    assert guard.open and group.calls == 2
    group.errors = [KafkaConnectionError("away")] * 3
    listener = guard.listening(Inner())
    await listener.on_partitions_revoked({TP})
    await listener.on_partitions_assigned({TP})
    with pytest.raises(KafkaConnectionError):
        await ended(guard)
    assert not guard.open


async def test_an_error_that_will_not_pass_is_not_asked_again(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own)])
    group.errors = [GroupAuthorizationFailedError("no describe on the group")]
    guard = guard_of(own, group)  # asks a broker that is away for ever
    await guard.listening(Inner()).on_partitions_assigned({TP})
    with pytest.raises(GroupAuthorizationFailedError):
        await ended(guard)
    assert group.calls == 1 and not guard.open


async def test_a_rebalance_forgets_the_check_of_the_assignment_before(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> list[Member]:
        started.set()
        await release.wait()
        return [member_of(own)]

    guard = SharedStateGuard(role="executor", group=GROUP, own=own, describe=slow, linger_s=0)
    inner = Inner()
    listener = guard.listening(inner)
    await listener.on_partitions_assigned({TP})
    await started.wait()
    await listener.on_partitions_revoked({TP})  # the pending check is cancelled
    release.set()
    await settle()
    assert not guard.open and inner.assigned == []


async def test_connecting_early_never_holds_back_the_end(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own), member_of(file_state(tmp_path, host="b"), 7)])
    connecting = asyncio.Event()

    async def hangs() -> None:  # a broker that never answers the early connection
        connecting.set()
        await asyncio.Event().wait()

    guard = SharedStateGuard(
        role="executor", group=GROUP, own=own, describe=group, prepare=hangs, linger_s=0
    )
    watch = asyncio.create_task(guard.watch())
    await asyncio.wait_for(connecting.wait(), 1)
    await guard.listening(Inner()).on_partitions_assigned({TP})
    await asyncio.wait_for(watch, 1)
    with pytest.raises(UnsharedState):
        guard.raise_if_ended()


async def test_after_a_refusal_no_later_assignment_opens_the_gate(tmp_path: Path) -> None:
    own = file_state(tmp_path)
    group = Group([member_of(own), member_of(file_state(tmp_path, host="b"), 7)])
    guard = guard_of(own, group)
    inner = Inner()
    listener = guard.listening(inner)
    await listener.on_partitions_assigned({TP})
    await settle()
    group.members = [member_of(own)]  # the other one left: alone again
    await listener.on_partitions_revoked({TP})
    await listener.on_partitions_assigned({TP})
    await settle()
    assert not guard.open and inner.assigned == []
    with pytest.raises(UnsharedState):
        await ended(guard)


async def test_the_lag_watcher_stops_when_a_cancel_meets_an_error() -> None:
    """A refused replica shuts down during a rebalance: the lag watcher's cancel can
    arrive as the partition's position fails (revoked), and asyncio.wait_for (3.11)
    then raises that error instead, which the watcher suppresses. It must stop anyway,
    or the service waits for it for ever."""
    revoked = asyncio.Event()

    class Revoking:
        def assignment(self) -> set[TopicPartition]:
            return {TP}

        def highwater(self, _: TopicPartition) -> int:
            return 10

        async def position(self, _: TopicPartition) -> int:
            await revoked.wait()
            raise IllegalStateError("partition is not assigned")

    watcher = asyncio.create_task(metrics.watch_lag(Revoking(), GROUP))
    await settle()
    revoked.set()
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(watcher, 3)

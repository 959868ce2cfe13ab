"""One database per role, enforced: a replica whose state is a local SQLite file
refuses to process while a replica with other state is in its consumer group.

Why: a replica's inbox (and the executor's effect ledger) live in its database.
Two replicas of one role on SQLite files of their own each keep a ledger of their
own, so a message redelivered to the other one after a rebalance runs its effect a
second time. Replicas of a role must share one database: PostgreSQL across
machines, or one SQLite file on one machine (``podium up --executors 3``: SQLite in
WAL mode is safe between processes of one host).

How: every replica names its state in its Kafka client id, as the last part of it
(``podium-executor-default-4242-db1a2b3c4d``): ``pg`` for a database server, which
every replica can share, or ``db`` and 8 hex digits of (host name, absolute path)
for a SQLite file. Brokers show the client id in the group's description (Kafka as
``client_id``, and both Kafka and Tansu at the front of the member id), so a
replica that describes its group knows whose state differs from its own::

    partitions revoked ─► gate closed (the consume loop's fetch waits)
    partitions assigned ─► describe the group ─► decide(members, own state)
        Allowed ─► readiness, gate open
        Refused ─► gate stays closed ─► linger ─► leave the group, exit 2

The check runs again on every rebalance, so a replica that was alone and allowed
refuses as soon as a second one with its own file joins; the second refuses too.
``decide`` is pure; the broker call is ``GroupMembers``; ``SharedStateGuard`` wires
the two into the consumer (``gated``) and its rebalance listener (``listening``).
``PODIUM_ALLOW_UNSHARED_SQLITE=true`` turns the refusal into a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from sqlalchemy.engine import URL, make_url

from podium_shared.kafka import make_admin
from podium_shared.settings import Settings

log = structlog.get_logger(__name__)

SHARED = "pg"  # the token of a database server: every replica can reach the same one
# The token is the last ``-``-separated part of the client id that looks like one; in
# a member id (client id, ``-``, a UUID) no part of the UUID can (8-4-4-4-12 hex).
_TOKEN = re.compile(r"(?<=-)(pg|db[0-9a-f]{8})(?=-|$)")
_UUID_END = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# A refused replica stays in its group this long before it leaves, so every replica
# that joined the same generation sees it when it checks, and refuses as well (their
# checks take milliseconds, but on a loaded machine one came 1.2 s after the other:
# leaving at once could let the slow one find itself alone).
REFUSAL_LINGER_S = 5.0
ALLOW_SETTING = "PODIUM_ALLOW_UNSHARED_SQLITE"


class UnsharedState(Exception):
    """Replicas of one role with different local databases met in a consumer group."""


@dataclass(frozen=True)
class LocalState:
    """What a replica's database is, as the check compares it."""

    token: str  # SHARED, or "db" + 8 hex of (host, SQLite file)
    where: str  # what a refusal names: the SQLite file, or the server

    @classmethod
    def of(cls, url: str | URL, host: str | None = None) -> LocalState:
        """The state of a database URL on this host."""
        url = make_url(url)
        if url.get_backend_name() != "sqlite":
            return cls(SHARED, url.render_as_string(hide_password=True))
        host = host or socket.gethostname()
        path = url.database or ""
        if path in ("", ":memory:") or path.startswith("file::memory:"):
            # In memory: this process's own, never shared with another.
            where, identity = "an in-memory SQLite database", f"{host}\0{os.getpid()}\0:memory:"
        else:
            where = os.path.realpath(path)
            identity = f"{host}\0{where}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
        return cls(f"db{digest}", where)

    def client_id(self, instance: str) -> str:
        """The Kafka client id of a replica with this state: ``podium-<instance>-<token>``."""
        return f"podium-{instance}-{self.token}"


def token_in(name: str) -> str | None:
    """The state token at the end of a client id or member id; None if it has none."""
    found = _TOKEN.findall(name)
    return str(found[-1]) if found else None


@dataclass(frozen=True)
class Member:
    """A member of a consumer group, as the broker describes it."""

    member_id: str
    client_id: str = ""  # Tansu leaves it empty; the member id starts with it
    host: str = ""

    @property
    def name(self) -> str:
        return self.client_id or _UUID_END.sub("", self.member_id)

    @property
    def token(self) -> str | None:
        return token_in(self.client_id) or token_in(self.member_id)


@dataclass(frozen=True)
class Allowed:
    """The replica may process: its state is shared, or no one else is here."""


@dataclass(frozen=True)
class Refused:
    """The replica must not process; ``reason`` says what to change."""

    reason: str


Decision = Allowed | Refused


def database_setting(role: str) -> str:
    return f"PODIUM_{role.upper()}_DATABASE_URL"


def decide(members: Iterable[Member], own: LocalState, *, role: str, group: str) -> Decision:
    """Whether a replica with ``own`` state may process beside ``members`` (itself
    among them). A database server is shared by construction; a SQLite file only
    with the members whose token is the same file on the same host. A member without
    a token (another program, an older podium) cannot show it shares the file."""
    if own.token == SHARED:
        return Allowed()
    others = [m for m in members if m.token != own.token]
    if not others:
        return Allowed()
    shown = ", ".join(m.name + (f" at {m.host}" if m.host else "") for m in others[:3])
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    return Refused(
        f"refusing to process: consumer group {group} has {len(others)} other "
        f"{role} replica(s) ({shown}{more}) that do not share this replica's database, "
        f"the local SQLite file {own.where}; a message redelivered between them would run "
        f"its effect again. Set {database_setting(role)}: point every replica of this "
        f"role at one PostgreSQL database ({ALLOW_SETTING}=true overrides this check)"
    )


class GroupMembers:
    """Describes one consumer group through an admin client of its own (started on
    first use, so replicas on a database server never open it)."""

    def __init__(self, admin: AIOKafkaAdminClient, group: str) -> None:
        self._admin = admin
        self._group = group
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:  # the first check may come while it connects
            if not self._started:
                await self._admin.start()
                self._started = True

    async def __call__(self) -> list[Member]:
        await self.start()
        responses = await self._admin.describe_consumer_groups([self._group])
        members: list[Member] = []
        for response in responses:
            for group in response.to_object()["groups"]:
                if group["error_code"]:
                    raise for_code(group["error_code"])(f"describing group {self._group}")
                members += [
                    Member(m["member_id"], m.get("client_id", ""), m.get("client_host", ""))
                    for m in group["members"]
                ]
        return members

    async def close(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._admin.close(), 5)


class SharedStateGuard:
    """Holds a replica's fetching until the check of the current assignment allows it.

    ``gated(consumer)`` is the consumer the consume loop is given; ``listening(inner)``
    the rebalance listener (``inner`` is told of an assignment once it is allowed);
    ``watch()`` a task of the service that ends once the check refused (after the
    linger) or the group cannot be described; ``raise_if_ended()`` then raises
    ``UnsharedState`` or that error, once the service has shut down."""

    def __init__(
        self,
        *,
        role: str,
        group: str,
        own: LocalState,
        describe: Callable[[], Awaitable[list[Member]]],
        prepare: Callable[[], Coroutine[Any, Any, None]] | None = None,
        allow_unshared: bool = False,
        linger_s: float = REFUSAL_LINGER_S,
        attempts: int | None = None,
        retry_s: float = 1.0,
        attempt_timeout_s: float = 10.0,
    ) -> None:
        self.role, self.group, self.own = role, group, own
        self._describe = describe
        self._prepare = prepare
        self._allow_unshared = allow_unshared
        self._linger_s = linger_s
        self._attempts = attempts
        self._retry_s = retry_s
        self._attempt_timeout_s = attempt_timeout_s
        self._open = asyncio.Event()
        self._ended = asyncio.Event()
        self._end: BaseException | None = None
        self._check: asyncio.Task[None] | None = None
        self.closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def of(cls, settings: Settings, *, role: str, group: str, url: str | URL) -> SharedStateGuard:
        """The guard of a replica of ``role`` in ``group`` with its database at ``url``."""
        members = GroupMembers(make_admin(settings, client_id=f"podium-{role}-guard"), group)
        guard = cls(
            role=role,
            group=group,
            own=LocalState.of(url),
            describe=members,
            prepare=members.start,
            allow_unshared=settings.allow_unshared_sqlite,
        )
        guard.closers.append(members.close)
        return guard

    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
        for close in self.closers:
            await close()

    @property
    def open(self) -> bool:
        return self._open.is_set()

    def gated(self, consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
        # The loops take an AIOKafkaConsumer; every other method is the consumer's own.
        return cast(AIOKafkaConsumer, GatedConsumer(consumer, self))

    def listening(self, inner: ConsumerRebalanceListener) -> ConsumerRebalanceListener:
        return _CheckOnAssign(self, inner)

    async def wait_open(self) -> None:
        await self._open.wait()

    async def decision(self) -> Decision:
        """Describe the group and decide. A broker that is away is asked again, for as
        long as it takes (``attempts``: None), as the consumer itself waits for it; an
        error that will not pass (a group ACL that forbids describing) is raised."""
        if self.own.token == SHARED:
            return Allowed()  # no broker call: a server is shared by every replica
        attempt = 0
        while True:
            attempt += 1
            try:
                members = await asyncio.wait_for(self._describe(), self._attempt_timeout_s)
                return decide(members, self.own, role=self.role, group=self.group)
            except (KafkaError, OSError) as exc:  # OSError: TimeoutError too
                passing = isinstance(exc, OSError) or getattr(exc, "retriable", False)
                if not passing or attempt == self._attempts:
                    raise
                log.warning("describing the consumer group failed; retrying", error=repr(exc))
                await asyncio.sleep(self._retry_s)

    def closed(self) -> None:
        """A rebalance began: hold fetching, and forget the last assignment's check."""
        self._open.clear()
        if self._check is not None:
            self._check.cancel()
            self._check = None

    def assigned(
        self, partitions: set[TopicPartition], then: Callable[[], Awaitable[None]]
    ) -> None:
        """Check the new assignment in a task of its own (the coordinator that calls
        the listener sends no heartbeat meanwhile); ``then`` runs once it is allowed.
        After a refusal nothing opens the gate again: the replica is on its way out."""
        self.closed()
        if self._end is not None:
            return
        self._check = asyncio.create_task(
            self._check_then_open(partitions, then), name="shared-state"
        )

    async def _check_then_open(
        self, partitions: set[TopicPartition], then: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            decision = await self.decision()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._finish(exc)
            return
        if isinstance(decision, Refused):
            if not self._allow_unshared:
                held = sorted(f"{t.topic}[{t.partition}]" for t in partitions)
                log.error("unshared state", reason=decision.reason, held_unhandled=held)
                self._finish(UnsharedState(decision.reason))
                return
            log.warning("unshared state allowed", setting=ALLOW_SETTING, reason=decision.reason)
        await then()
        self._open.set()

    def _finish(self, end: BaseException) -> None:
        if self._end is None:
            self._end = end
            self._ended.set()

    async def watch(self) -> None:
        """Run beside the service; return when it must end (after the linger, if refused).

        It returns rather than raises, so the service shuts down as on SIGTERM
        (leaves its group, drains its outbox) before ``raise_if_ended``."""
        prepared: asyncio.Task[None] | None = None
        if self._prepare is not None and self.own.token != SHARED:
            # Connected before the first assignment, the check is one request.
            prepared = asyncio.create_task(self._prepare())
        try:
            await self._ended.wait()
            if isinstance(self._end, UnsharedState):
                await asyncio.sleep(self._linger_s)
        finally:
            if prepared is not None:
                prepared.cancel()
                with contextlib.suppress(BaseException):
                    await prepared

    def raise_if_ended(self) -> None:
        if self._end is not None:
            raise self._end


class GatedConsumer:
    """A consumer whose ``getmany`` hands out records only while the guard is open.

    The gate is waited for before the fetch and again after it: a fetch that began
    before a rebalance can return records of the new assignment, which must wait
    for its check (and never be handled if it refuses)."""

    def __init__(self, consumer: AIOKafkaConsumer, guard: SharedStateGuard) -> None:
        self._consumer = consumer
        self._guard = guard

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        await self._guard.wait_open()
        batches: dict[TopicPartition, list[Any]] = await self._consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
        if batches and not self._guard.open:
            await self._guard.wait_open()
        return batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class _CheckOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, guard: SharedStateGuard, inner: ConsumerRebalanceListener) -> None:
        self._guard = guard
        self._inner = inner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._guard.closed()
        await self._inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._guard.assigned(assigned, lambda: self._inner.on_partitions_assigned(assigned))

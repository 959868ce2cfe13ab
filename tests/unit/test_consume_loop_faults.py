"""A fault injected at every step of both consume loops, for one message of a batch:
that message ends in the DLQ with a reason (or, where the step only saves work or
traces, is handled anyway), the others are handled, the offsets are committed past
all of them and the loop goes on. Real SQLite; a scripted consumer instead of a broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord, TopicPartition
from sqlalchemy.engine import Connection

from podium_contracts import DLQ_HEADER_PREFIX, Event, TaskAccepted, TaskSubmitted, encode
from podium_shared import ConsumeLoop, Handler, UnitOfWork, make_engine, telemetry
from podium_shared import settle as settle_module
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop
from podium_shared.db import outbox
from podium_shared.dlq import dlq_headers

pytestmark = pytest.mark.unit
TOPIC = "t.tasks.v1"
BAD = "bad"


@dataclass
class ScriptedConsumer:
    queued: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    commits: list[dict[int, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def paused(self) -> set[TopicPartition]:
        return set()

    def pause(self, *tps: TopicPartition) -> None:
        return None

    def resume(self, *tps: TopicPartition) -> None:
        return None

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if not self.queued:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        taken, self.queued = self.queued, []
        return {TopicPartition(TOPIC, 0): taken}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp.partition: o.offset for tp, o in offsets.items()})


class Relay:
    def notify(self) -> None:
        return None


def record(offset: int, task_id: str) -> ConsumerRecord[bytes, bytes]:
    value, headers = encode(
        TaskSubmitted(task_id=task_id, workflow="w"), source="t", id=f"id-{task_id}"
    )
    return ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=task_id.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(task_id),
        serialized_value_size=len(value),
        headers=(*headers, ("x-kept", b"1")),
    )


def is_bad(event: Event) -> bool:
    return isinstance(event.payload, TaskSubmitted) and event.payload.task_id == BAD


class Unprintable(Exception):
    """An error whose message cannot be rendered, as str() of a RecursionError
    carrying a deep payload could not."""

    def __str__(self) -> str:
        raise RecursionError("maximum recursion depth exceeded")


@dataclass
class Faults:
    """Where to fail, for the bad message only."""

    execute: BaseException | None = None
    apply: BaseException | None = None
    prepare: BaseException | None = None

    async def run(self, event: Event) -> None:
        if self.execute is not None and is_bad(event):
            raise self.execute

    def write(self, event: Event, _r: Any, uow: UnitOfWork) -> None:
        if self.apply is not None and is_bad(event):
            raise self.apply
        assert isinstance(event.payload, TaskSubmitted)
        task_id = event.payload.task_id
        accepted = TaskAccepted(task_id=task_id, workflow="w", accepted_at=event.envelope.time)
        uow.publish("t.task-events.v1", accepted, key=task_id)

    def read_ahead(self, _conn: Connection, events: list[Event]) -> None:
        if self.prepare is not None and any(is_bad(e) for e in events):
            raise self.prepare


def failing_for_bad(original: Callable[..., Any], exc: BaseException, match: Any) -> Any:
    def patched(*args: Any, **kwargs: Any) -> Any:
        if match(*args, **kwargs):
            raise exc
        return original(*args, **kwargs)

    return patched


def _bad_value(value: Any, *_: Any, **__: Any) -> bool:
    return isinstance(value, bytes) and b'"bad"' in value


def _bad_ids(_conn: Any, _group: Any, ids: Any, *_: Any) -> bool:
    # ids are (source, id) pairs: one pair, or a list of them
    pairs = [ids] if isinstance(ids, tuple) else list(ids)
    return any("id-bad" in (p if isinstance(p, tuple) else (p,)) for p in pairs)


def _bad_pairs(_conn: Any, _group: Any, pairs: Any) -> bool:
    return any(message[1] == "id-bad" for message, _topic in pairs)  # ((source, id), topic)


def _bad_record(r: Any, *_: Any, **__: Any) -> bool:
    return b'"bad"' in r.value


def _with_headers(**kwargs: Any) -> bool:
    return any(not k.startswith(DLQ_HEADER_PREFIX) for k, _ in kwargs["headers"])


@dataclass(frozen=True)
class Case:
    name: str
    faults: Faults = field(default_factory=Faults)
    # (module attribute to patch, exception, which calls fail)
    patches: tuple[tuple[Any, str, BaseException, Any], ...] = ()
    dead_lettered: str | None = "processing_error"  # None: the bad message is handled
    message: str = ""


CASES = [
    Case(
        "decode raises (a payload too deep for a parser)",
        patches=((settle_module, "decode_record", RecursionError("deep"), _bad_value),),
        message="deep",
    ),
    Case(
        "the inbox lookup raises",
        patches=((settle_module, "seen_before", ValueError("lookup"), _bad_ids),),
        message="lookup",
    ),
    Case("prepare raises", faults=Faults(prepare=ValueError("ahead")), dead_lettered=None),
    Case(
        "the span cannot start",
        patches=((telemetry, "start_consume", RuntimeError("tracing"), _bad_record),),
        dead_lettered=None,
    ),
    Case("execute raises", faults=Faults(execute=ValueError("call")), message="call"),
    Case("apply raises", faults=Faults(apply=KeyError("state")), message="state"),
    Case(
        "apply raises an error that cannot be printed",
        faults=Faults(apply=Unprintable()),
        message="could not be rendered",
    ),
    Case(
        "the inbox write raises",
        patches=(
            (settle_module, "record_all_received", ValueError("inbox"), _bad_pairs),
            (settle_module, "record_received", ValueError("inbox"), _bad_ids),
        ),
        message="inbox",
    ),
    Case(
        "the dead letter is refused with its headers",
        faults=Faults(apply=ValueError("handler")),
        patches=((settle_module, "dead_letter", ValueError("headers"), _with_headers),),
        message="original headers dropped",
    ),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    c: Case = request.param
    for module, name, exc, match in c.patches:
        monkeypatch.setattr(module, name, failing_for_bad(getattr(module, name), exc, match))
    yield c


def outcome(engine: sa.Engine) -> tuple[list[bytes | None], list[dict[str, str]]]:
    with engine.connect() as c:
        rows = list(c.execute(sa.select(outbox).order_by(outbox.c.id)))
    handled = sorted((r.key for r in rows if r.topic == "t.task-events.v1"), key=str)
    dlq = [r for r in rows if r.topic == TOPIC + ".dlq"]
    for r in dlq:
        assert r.key == BAD.encode()
    return handled, [dlq_headers([(k, v.encode("latin-1")) for k, v in r.headers]) for r in dlq]


def check(case: Case, engine: sa.Engine, commits: list[dict[int, int]]) -> None:
    handled, dlq = outcome(engine)
    if case.dead_lettered is None:
        assert handled == [b"a", b"bad", b"c"] and dlq == []
    else:
        assert handled == [b"a", b"c"]
        [meta] = dlq
        assert meta["reason"] == case.dead_lettered
        assert case.message in meta["error-message"], meta
        assert meta["original-offset"] == "1"
    assert commits[-1] == {0: 3}


RECORDS = [record(0, "a"), record(1, BAD), record(2, "c")]


async def test_consume_loop_contains_a_fault_at_every_step(case: Case, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    consumer = ScriptedConsumer()
    f = case.faults
    loop = ConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=f.write, execute=f.run, prepare=f.read_ahead),
        group="g",
        service="svc",
    )
    await loop.process(list(RECORDS))
    check(case, engine, consumer.commits)
    # And the loop goes on.
    await loop.process([record(3, "d")])
    assert consumer.commits[-1] == {0: 4}


def concurrent_loop(
    consumer: ScriptedConsumer, engine: sa.Engine, handler: Handler[Any], service: str = "svc"
) -> ConcurrentConsumeLoop:
    return ConcurrentConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=handler,
        group="g",
        service=service,
        concurrency=4,
        poll_timeout_ms=5,
    )


@contextlib.asynccontextmanager
async def running(loop: ConcurrentConsumeLoop) -> AsyncIterator[asyncio.Task[None]]:
    """The loop running in a task; shut down and cancelled on the way out."""
    task = asyncio.create_task(loop.run())
    try:
        yield task
    finally:
        await loop.shutdown(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def committed(consumer: ScriptedConsumer, task: asyncio.Task[None], point: int) -> None:
    """Wait until the loop has committed partition 0 up to ``point``; fail if it died."""
    async with asyncio.timeout(10):
        while not consumer.commits or consumer.commits[-1] != {0: point}:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)


async def test_concurrent_loop_contains_a_fault_at_every_step(case: Case, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    consumer = ScriptedConsumer(queued=list(RECORDS))
    f = case.faults
    handler = Handler(apply=f.write, execute=f.run, prepare=f.read_ahead)
    async with running(concurrent_loop(consumer, engine, handler)) as task:
        await committed(consumer, task, 3)
        check(case, engine, consumer.commits)
        consumer.queued.append(record(3, "d"))  # and the loop goes on
        await committed(consumer, task, 4)

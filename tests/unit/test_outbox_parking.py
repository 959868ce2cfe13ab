"""The relay's decisions about rows it cannot send, DLQ copies that always fit,
and the size limits (issue 12, items 1 and 2)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)
from prometheus_client import REGISTRY

from podium_contracts import TaskSubmitted
from podium_shared import OutboxRelay, UnitOfWork, make_engine
from podium_shared.blobs import BlobError, FolderStore, open_store, read
from podium_shared.db import outbox, outbox_parked
from podium_shared.dlq import DlqReason, dead_letter, dlq_headers, fit, original_record
from podium_shared.limits import (
    MAX_PAYLOAD_BYTES,
    MAX_RECORD_BYTES,
    PayloadTooLarge,
    record_size,
    too_large,
)
from podium_shared.outbox import OutgoingMessage, settle, unsendable, write_outbox

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "park"),
    [
        (MessageSizeTooLargeError("too big"), True),
        (AssertionError("Need at least one: key or value"), True),
        (TypeError("value must be bytes"), True),
        (KafkaTimeoutError(), False),
        (KafkaConnectionError(), False),
        (NotLeaderForPartitionError(), False),
        (ConnectionError("broker away"), False),
    ],
)
def test_only_errors_about_the_record_itself_park_it(error: BaseException, park: bool) -> None:
    assert unsendable(error) is park


def test_settle_sorts_rows_by_outcome() -> None:
    big, gone = MessageSizeTooLargeError("big"), KafkaTimeoutError()
    done = settle(["a", "b", "c"], [None, big, gone])
    assert done.sent == ["a"] and done.parked == [("b", big)] and done.kept == [("c", gone)]
    assert done.progress == 2


@dataclass
class RefusingProducer:
    """Answers like aiokafka: refuses at ``send`` what the client checks itself
    (size, no key and no value), and fails the future of what the broker refuses."""

    broker_refuses: bytes = b"refused-by-broker"
    sent: list[bytes | None] = field(default_factory=list)

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        assert not (value is None and key is None), "Need at least one: key or value"
        if record_size(key, value, list(headers or [])) > MAX_RECORD_BYTES:
            raise MessageSizeTooLargeError("The message is too large")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if value == self.broker_refuses:
            fut.set_exception(MessageSizeTooLargeError("MESSAGE_TOO_LARGE from the broker"))
        else:
            self.sent.append(key)
            fut.set_result(None)
        return fut


def _count(topic: str, error_type: str) -> float:
    labels = {"topic": topic, "error_type": error_type}
    return REGISTRY.get_sample_value("podium_outbox_parked_total", labels) or 0.0


async def test_the_relay_parks_what_it_can_never_send_and_sends_the_rest(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    rows = [
        OutgoingMessage("t.park", b"k0", b"ok", []),
        OutgoingMessage("t.park", b"k1", b"x" * (MAX_RECORD_BYTES + 1), []),
        OutgoingMessage("t.park", b"k2", b"ok", []),
        OutgoingMessage("t.park", None, None, [("ce_id", b"tomb")]),
        OutgoingMessage("t.park", b"k4", b"refused-by-broker", []),
        OutgoingMessage("t.park", b"k5", b"ok", []),
    ]
    with engine.begin() as conn:
        write_outbox(conn, rows)
    before = _count("t.park", "MessageSizeTooLargeError"), _count("t.park", "AssertionError")
    producer = RefusingProducer()
    relay = OutboxRelay(engine, producer)
    assert await relay.publish_pending() == 6
    assert producer.sent == [b"k0", b"k2", b"k5"]
    assert relay.published == 3 and relay.parked == 3
    with engine.connect() as conn:
        assert conn.execute(sa.select(outbox)).all() == []
        parked = conn.execute(sa.select(outbox_parked).order_by(outbox_parked.c.id)).all()
    assert [(p.outbox_id, p.key, p.error_type) for p in parked] == [
        (2, b"k1", "MessageSizeTooLargeError"),
        (4, None, "AssertionError"),
        (5, b"k4", "MessageSizeTooLargeError"),
    ]
    assert parked[1].headers == [["ce_id", "tomb"]] and "key or value" in parked[1].error
    assert len(parked[0].value) == MAX_RECORD_BYTES + 1  # kept whole
    after = _count("t.park", "MessageSizeTooLargeError"), _count("t.park", "AssertionError")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert await relay.publish_pending() == 0
    engine.dispose()


def test_a_small_dead_letter_is_the_original_untouched(tmp_path: Path) -> None:
    copy = dead_letter(
        topic="p.tasks.v1",
        partition=1,
        offset=7,
        key=b"k",
        value=b"{bad",
        headers=[("x", b"1")],
        reason=DlqReason.UNDECODABLE,
        error_type="UndecodableMessage",
        error_message="not JSON",
        service="router",
    )
    assert (copy.topic, copy.key, copy.value) == ("p.tasks.v1.dlq", b"k", b"{bad")
    assert copy.headers[0] == ("x", b"1") and "value-ref" not in dlq_headers(copy.headers)


META = {"reason": "undecodable", "original-topic": "p.tasks.v1"}


def test_a_null_key_tombstone_gets_a_sendable_copy_and_comes_back_as_it_was() -> None:
    copy = fit("p.tasks.v1.dlq", None, None, [("x", b"1")], META)
    assert copy.key is None and copy.value == b""
    assert dlq_headers(copy.headers)["value-null"] == "true"
    assert original_record(copy.key, copy.value, copy.headers) == (None, None, [("x", b"1")])


def test_a_body_too_large_for_a_copy_goes_aside_by_reference(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "blobs")
    body = b"b" * (10 * 1024 * 1024)
    copy = fit("p.tasks.v1.dlq", b"key", body, [("x", b"1")], META, store=store)
    meta = dlq_headers(copy.headers)
    assert copy.value == b"" and copy.key == b"key" and int(meta["value-bytes"]) == len(body)
    assert record_size(copy.key, copy.value, copy.headers) <= MAX_RECORD_BYTES
    assert read(meta["value-ref"]) == body
    assert original_record(copy.key, copy.value, copy.headers) == (b"key", body, [("x", b"1")])


def test_huge_headers_and_key_go_aside_too(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "blobs")
    key, headers = b"k" * MAX_RECORD_BYTES, [("h", b"v" * MAX_RECORD_BYTES), ("x", b"\xff")]
    copy = fit("p.tasks.v1.dlq", key, b"small", headers, META, store=store)
    meta = dlq_headers(copy.headers)
    assert {"headers-ref", "key-ref"} <= set(meta) and "value-ref" not in meta
    assert copy.key is None and copy.value == b"small"
    assert record_size(copy.key, copy.value, copy.headers) <= MAX_RECORD_BYTES
    assert original_record(copy.key, copy.value, copy.headers) == (key, b"small", headers)


def test_a_blob_that_changed_is_refused(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "blobs")
    copy = fit("t.dlq", b"k", b"v" * (2 * MAX_RECORD_BYTES), [], META, store=store)
    Path(urlparse(dlq_headers(copy.headers)["value-ref"]).path).write_bytes(b"tampered")
    with pytest.raises(BlobError, match="SHA-256"):
        original_record(copy.key, copy.value, copy.headers)


def test_only_a_local_folder_is_a_blob_store(tmp_path: Path) -> None:
    assert open_store(str(tmp_path)).root == tmp_path.resolve()
    assert open_store(tmp_path.as_uri()).root == tmp_path.resolve()
    with pytest.raises(BlobError, match="only a local folder"):
        open_store("s3://bucket/podium")


def test_publishing_a_message_over_the_payload_limit_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    with engine.begin() as conn:
        uow = UnitOfWork(conn, source="test")
        big = TaskSubmitted(task_id="t", workflow="w", input={"x": "y" * MAX_PAYLOAD_BYTES})
        with pytest.raises(PayloadTooLarge, match="over the limit"):
            uow.publish("t.x", big, key="t")
        assert uow.pending == []
    engine.dispose()


def test_too_large_names_the_data_and_the_limit() -> None:
    assert too_large("step a's input", {"x": "y" * 10}, limit=100) is None
    why = too_large("step a's input", {"x": "y" * 200}, limit=100)
    assert why == "step a's input is 208 bytes as JSON, over the limit of 100 bytes"


async def test_the_claiming_relay_parks_too_and_leaves_no_claim(database_url: str) -> None:
    from podium_shared.claiming import ClaimingRelay
    from podium_shared.db import outbox_claims as claims

    engine = make_engine(database_url)
    with engine.begin() as conn:
        write_outbox(
            conn,
            [
                OutgoingMessage("t.claim", None, None, []),
                OutgoingMessage("t.claim", b"k1", b"ok", []),
                OutgoingMessage("t.claim", b"k2", b"x" * (MAX_RECORD_BYTES + 1), []),
            ],
        )
    producer = RefusingProducer()
    relay = ClaimingRelay(engine, producer, owner="r0")
    assert await relay.publish_pending() == 3
    assert producer.sent == [b"k1"] and relay.parked == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(outbox)).all() == []
        assert conn.execute(sa.select(claims)).all() == []
        parked = conn.execute(sa.select(outbox_parked.c.error_type)).scalars().all()
    assert sorted(parked) == ["AssertionError", "MessageSizeTooLargeError"]
    engine.dispose()


@dataclass
class SlowAcknowledgingProducer:
    """Acknowledges a record only when the test says so, so a stop can arrive while
    a batch is between the send and the broker's answer."""

    sent: list[bytes | None] = field(default_factory=list)
    sending: asyncio.Event = field(default_factory=asyncio.Event)
    acknowledge: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append(key)
        self.sending.set()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledge = self.acknowledge

        async def answer() -> None:
            await acknowledge.wait()
            fut.set_result(None)

        asyncio.get_running_loop().create_task(answer())
        return fut


async def test_a_stopped_relay_finishes_its_batch_so_shutdown_sends_nothing_twice(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            write_outbox(conn, [OutgoingMessage("t.stop", b"k0", b"ok", [])])
        producer = SlowAcknowledgingProducer()
        relay = OutboxRelay(engine, producer)
        running = asyncio.create_task(relay.run())
        relay.notify()
        await asyncio.wait_for(producer.sending.wait(), 5)
        relay.stop()  # while the broker has not answered yet
        producer.acknowledge.set()
        await asyncio.wait_for(running, 5)  # ends by itself: no cancellation needed
        assert not running.cancelled()
        # What the service's shutdown does next: send what is left. Nothing is.
        assert await relay.publish_pending() == 0
        assert producer.sent == [b"k0"]
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 0
    finally:
        # Its PostgreSQL connection closed now, not by the garbage collector in a later
        # test (a ResourceWarning there fails that test: CI, test_recovery_timers).
        engine.dispose()

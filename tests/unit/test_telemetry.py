"""Tracing hooks with an in-memory exporter: context through Kafka headers and
the outbox, spans of both consume loops, and telemetry that fails without
breaking a consume or a send."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import structlog
from aiokafka import TopicPartition
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from podium_contracts import Event, StepRequested, TaskAccepted, TaskSubmitted, encode
from podium_shared import ConsumeLoop, Handler, OutboxRelay, UnitOfWork, make_engine, telemetry
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop
from podium_shared.db import outbox
from podium_shared.dlq import DlqReason, dead_letter
from podium_shared.telemetry import TelemetrySettings
from tests.unit.test_consume_loop import RecordingConsumer, RecordingProducer, record
from tests.unit.test_executor_concurrent import ScriptedConsumer

pytestmark = pytest.mark.unit

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
UPSTREAM = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
STATE = "vendor=opaque"


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("svc", tmp_path, exporter=exporter)
    yield exporter
    telemetry.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def hexid(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent else None


def row_context(row: Any) -> tuple[str, str]:
    """(trace id, span id) of an outbox row's traceparent."""
    tp = dict(row.headers)["traceparent"]
    _, trace_id, span_id, _ = tp.split("-")
    return trace_id, span_id


def outbox_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(sa.select(outbox).order_by(outbox.c.id)))


def submitted(task_id: str, traceparent: str | None = UPSTREAM) -> tuple[bytes, Any]:
    return encode(
        TaskSubmitted(task_id=task_id, workflow="hello"),
        source="upstream",
        traceparent=traceparent,
        tracestate=STATE if traceparent else None,
    )


def accept(event: Event, _r: object, uow: UnitOfWork) -> None:
    assert isinstance(event.payload, TaskSubmitted)
    # What the router does: publish inside a span of its own decision.
    with telemetry.span("router.route", **{"podium.task_id": event.payload.task_id}):
        uow.publish(
            "t.task-events.v1",
            TaskAccepted(
                task_id=event.payload.task_id, workflow="hello", accepted_at=event.envelope.time
            ),
            key=event.payload.task_id,
        )


def make_loop(
    tmp_path: Path, apply: Any = accept
) -> tuple[ConsumeLoop, RecordingConsumer, sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    consumer = RecordingConsumer()

    class Relay:
        def notify(self) -> None:
            return None

    loop = ConsumeLoop(
        consumer=consumer,
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply),
        group="g",
        service="svc",
    )
    return loop, consumer, engine


# -- context through headers -------------------------------------------------------------------


def test_extract_and_inject_round_trip_a_w3c_context() -> None:
    ctx = telemetry.extract(UPSTREAM, STATE)
    from opentelemetry import trace

    parent = trace.get_current_span(ctx).get_span_context()
    assert f"{parent.trace_id:032x}" == UPSTREAM_TRACE and parent.is_remote
    assert telemetry.inject(trace.NonRecordingSpan(parent)) == (UPSTREAM, STATE)
    assert telemetry.header_context([("traceparent", UPSTREAM.encode()), ("x", None)]) == (
        UPSTREAM,
        None,
    )


def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    value, headers = submitted("a", traceparent="00-not-a-trace-01")
    from podium_contracts import decode

    r = record(0, value, headers)
    span = telemetry.start_consume(r, decode(value, headers), group="g", service="svc")
    telemetry.end(span)
    (finished,) = spans.get_finished_spans()
    assert finished.parent is None


def test_the_consume_span_is_the_child_of_the_message_context(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    loop, consumer, _ = make_loop(tmp_path)
    asyncio.run(loop.process([record(5, *submitted("task-1"))]))
    got = by_name(spans)
    process, route = got["process t.tasks.v1"], got["router.route"]
    assert hexid(process)[0] == UPSTREAM_TRACE
    assert parent_id(process) == UPSTREAM_SPAN and process.parent and process.parent.is_remote
    assert process.kind.name == "CONSUMER"
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == "t.tasks.v1"
    assert attrs["messaging.kafka.offset"] == 5
    assert attrs["messaging.consumer.group.name"] == "g"
    assert attrs["podium.task_id"] == "task-1"
    assert process.resource.attributes["service.name"] == "svc"
    assert parent_id(route) == hexid(process)[1]
    assert consumer.commits == [{TopicPartition("t.tasks.v1", 0): 6}]


def test_the_outbox_row_keeps_the_current_span_context(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    loop, _, engine = make_loop(tmp_path)
    asyncio.run(loop.process([record(0, *submitted("task-1"))]))
    (row,) = outbox_rows(engine)
    route = by_name(spans)["router.route"]
    assert row_context(row) == hexid(route)  # the routing span's, not the incoming one
    assert dict(row.headers)["tracestate"] == STATE


def test_without_a_span_of_its_own_the_row_carries_the_process_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    def plain(event: Event, _r: object, uow: UnitOfWork) -> None:
        uow.publish("t.out", TaskSubmitted(task_id="x", workflow="w"), key="x")

    loop, _, engine = make_loop(tmp_path, plain)
    asyncio.run(loop.process([record(0, *submitted("task-1"))]))
    (row,) = outbox_rows(engine)
    assert row_context(row) == hexid(by_name(spans)["process t.tasks.v1"])


def test_with_tracing_off_the_incoming_context_is_carried_on(tmp_path: Path) -> None:
    assert telemetry.configure_tracing("svc", tmp_path, TelemetrySettings(tracing="off")) is None
    loop, _, engine = make_loop(tmp_path)
    asyncio.run(loop.process([record(0, *submitted("task-1"))]))
    (row,) = outbox_rows(engine)
    assert row_context(row) == (UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert dict(row.headers)["tracestate"] == STATE
    assert not (tmp_path / "spans").exists()


def test_the_relay_publish_span_continues_the_row_context(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    loop, _, engine = make_loop(tmp_path)
    asyncio.run(loop.process([record(0, *submitted("task-1"))]))
    (row,) = outbox_rows(engine)
    sent: list[tuple[str, Any]] = []

    class Producer(RecordingProducer):
        async def send(
            self, topic: str, value: Any = None, key: Any = None, headers: Any = None
        ) -> Any:
            sent.append((topic, headers))
            return await super().send(topic, value, key, headers)

    assert asyncio.run(OutboxRelay(engine, Producer()).publish_pending()) == 1
    publish = by_name(spans)["publish t.task-events.v1"]
    assert publish.kind.name == "PRODUCER"
    assert (hexid(publish)[0], parent_id(publish)) == row_context(row)
    # The consumer on the other side becomes the child of the publish span.
    _, headers = sent[0]
    tp = dict(headers)["traceparent"].decode()
    assert tp.split("-")[1:3] == list(hexid(publish))
    assert dict(headers)["tracestate"] == STATE.encode()


def test_a_dead_letter_keeps_its_original_headers(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    value, headers = submitted("task-1")
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    with engine.begin() as conn:
        uow = UnitOfWork(conn, source="svc")
        uow.publish_raw(
            dead_letter(
                topic="t.tasks.v1",
                partition=0,
                offset=0,
                key=b"k",
                value=value,
                headers=headers,
                reason=DlqReason.INVALID,
                error_type="X",
                error_message="m",
                service="svc",
            )
        )
        uow.flush()
    producer = RecordingProducer()
    sent: list[Any] = []
    orig = producer.send

    async def send(topic: str, value: Any = None, key: Any = None, headers: Any = None) -> Any:
        sent.append(headers)
        return await orig(topic, value, key, headers)

    producer.send = send  # type: ignore[method-assign]
    asyncio.run(OutboxRelay(engine, producer).publish_pending())
    assert dict(sent[0])["traceparent"] == UPSTREAM.encode()
    publish = by_name(spans)["publish t.tasks.v1.dlq"]
    assert parent_id(publish) == UPSTREAM_SPAN


def test_dead_lettering_marks_the_process_span_failed(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    def boom(event: Event, _r: object, uow: UnitOfWork) -> None:
        raise ValueError("bad")

    loop, _, _ = make_loop(tmp_path, boom)
    asyncio.run(
        loop.process(
            [record(0, *submitted("t")), record(1, b"\xff", [("traceparent", UPSTREAM.encode())])]
        )
    )
    process = [s for s in spans.get_finished_spans() if s.name == "process t.tasks.v1"]
    assert len(process) == 2
    assert all(s.status.status_code.name == "ERROR" for s in process)
    assert {e.name for s in process for e in s.events} >= {"dead_lettered"}
    poison = next(s for s in process if dict(s.attributes or {})["messaging.kafka.offset"] == 1)
    assert parent_id(poison) == UPSTREAM_SPAN  # from the raw headers: the event did not decode


# -- the concurrent loop ------------------------------------------------------------------------


def test_the_concurrent_loop_runs_execute_and_apply_inside_the_message_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    step = StepRequested(
        task_id="task-9",
        step_id="s1",
        workflow="w",
        capability="echo",
        pool="default",
        input={},
        idempotency_key="task-9/s1",
    )
    value, headers = encode(step, source="router", traceparent=UPSTREAM)
    seen: dict[str, Any] = {}

    async def execute(event: Event) -> str:
        with telemetry.span("executor.call"):
            seen["execute"] = structlog.contextvars.get_contextvars()
            await asyncio.sleep(0)
        return "ran"

    def apply(event: Event, result: str | None, uow: UnitOfWork) -> None:
        uow.publish("t.results", TaskSubmitted(task_id="task-9", workflow="w"), key="task-9")

    async def main() -> ConcurrentConsumeLoop:
        engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
        consumer = ScriptedConsumer(queued=[record(0, value, headers, topic="t.tasks.v1")])

        class Relay:
            def notify(self) -> None:
                return None

        loop = ConcurrentConsumeLoop(
            consumer=consumer,
            engine=engine,
            relay=Relay(),  # type: ignore[arg-type]
            handler=Handler(apply=apply, execute=execute),
            group="g",
            service="executor",
            concurrency=4,
            poll_timeout_ms=5,
        )
        runner = asyncio.create_task(loop.run())
        for _ in range(200):
            if loop.stats.handled:
                break
            await asyncio.sleep(0.01)
        await loop.shutdown(1)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        seen["rows"] = outbox_rows(engine)
        return loop

    asyncio.run(main())
    got = by_name(spans)
    process, call = got["process t.tasks.v1"], got["executor.call"]
    assert parent_id(process) == UPSTREAM_SPAN
    assert parent_id(call) == hexid(process)[1]
    assert seen["execute"]["task_id"] == "task-9" and seen["execute"]["step_id"] == "s1"
    (row,) = seen["rows"]
    assert row_context(row) == hexid(process)


# -- telemetry that fails -----------------------------------------------------------------------


class Exploding(SpanProcessor):
    def on_start(self, span: Span, parent_context: Any = None) -> None:
        raise RuntimeError("processor on_start")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor on_end")


class FailingExporter(SpanExporter):
    calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        FailingExporter.calls += 1
        raise ConnectionError("collector away")


@pytest.mark.parametrize("broken", ["processor", "exporter"])
def test_broken_telemetry_never_breaks_the_consume_loop_or_the_relay(
    broken: str, tmp_path: Path
) -> None:
    if broken == "processor":
        telemetry.configure_tracing("svc", tmp_path, processor=Exploding())
    else:
        telemetry.configure_tracing("svc", tmp_path, exporter=FailingExporter())
    try:
        loop, consumer, engine = make_loop(tmp_path)
        asyncio.run(loop.process([record(0, *submitted("a")), record(1, *submitted("b"))]))
        assert loop.stats.handled == 2 and loop.stats.dead_lettered == 0
        assert consumer.commits == [{TopicPartition("t.tasks.v1", 0): 2}]
        rows = outbox_rows(engine)
        assert len(rows) == 2
        producer = RecordingProducer()
        assert asyncio.run(OutboxRelay(engine, producer).publish_pending()) == 2
        assert [k for _, k in producer.sent] == [b"a", b"b"]
    finally:
        telemetry.shutdown()
    if broken == "exporter":
        assert FailingExporter.calls > 0  # it was really called, and really failed


def test_a_span_block_still_raises_its_own_errors(spans: InMemorySpanExporter) -> None:
    with pytest.raises(KeyError), telemetry.span("work"):
        raise KeyError("business error")
    (work,) = spans.get_finished_spans()
    assert work.status.status_code.name == "ERROR"
    assert dict(work.attributes or {})["error.type"] == "KeyError"


# -- export and logs ----------------------------------------------------------------------------


def test_local_mode_writes_json_lines_under_home(tmp_path: Path) -> None:
    telemetry.configure_tracing("router", tmp_path, TelemetrySettings(tracing="local"))
    with telemetry.span("router.route", **{"podium.task_id": "t-1"}):
        pass
    telemetry.shutdown()  # flushes
    (path,) = (tmp_path / "spans").glob("router-*.jsonl")
    (line,) = path.read_bytes().splitlines()
    span = orjson.loads(line)
    assert span["name"] == "router.route" and span["service"] == "router"
    assert span["attributes"] == {"podium.task_id": "t-1"}
    assert span["end_ns"] >= span["start_ns"] and len(span["trace_id"]) == 32


def test_the_mode_follows_the_standard_otlp_variables() -> None:
    assert TelemetrySettings().tracing_mode({}) == "local"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert TelemetrySettings().tracing_mode(env) == "otlp"
    assert TelemetrySettings(tracing="off").tracing_mode(env) == "off"


def test_the_standard_sampler_variables_thin_the_spans_and_keep_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sampling is the lever when tracing costs too much: the SDK reads the variables.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing(
        "svc", tmp_path, TelemetrySettings(tracing="local"), exporter=exporter
    )
    try:
        with telemetry.span("router.route", **{"podium.task_id": "t-1"}):
            traceparent, _ = telemetry.outgoing_context(None, None)
        assert exporter.get_finished_spans() == ()
        # Not recorded, yet still propagated with the sampled bit clear, so every
        # downstream service makes the same decision for this trace.
        assert traceparent is not None and int(traceparent[-2:], 16) & 1 == 0
    finally:
        telemetry.shutdown()


def test_log_lines_carry_task_step_and_trace_ids(spans: InMemorySpanExporter) -> None:
    step = StepRequested(
        task_id="task-3",
        step_id="s2",
        workflow="w",
        capability="echo",
        pool="default",
        input={},
        idempotency_key="k",
    )
    value, headers = encode(step, source="router", traceparent=UPSTREAM)
    from podium_contracts import decode

    event = decode(value, headers)
    span = telemetry.start_consume(record(0, value, headers), event, group="g", service="svc")
    with telemetry.activate(span, event):
        bound = structlog.contextvars.get_contextvars()
        line = telemetry.add_trace_ids(None, "info", {"event": "x"})
    telemetry.end(span)
    assert bound["task_id"] == "task-3" and bound["step_id"] == "s2"
    assert line["trace_id"] == UPSTREAM_TRACE
    assert "task_id" not in structlog.contextvars.get_contextvars()  # unbound afterwards

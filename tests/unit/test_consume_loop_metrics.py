"""Metrics are counted where the event happens, never in a tracing hook: the same
messages through either consume loop and the relay give the same counters with
tracing off, on, sampled out, or broken (a hook that raises)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from podium_shared import ConsumeLoop, Handler, OutboxRelay, make_engine, telemetry
from podium_shared.telemetry import TelemetrySettings
from tests.unit.test_consume_loop import RecordingProducer
from tests.unit.test_consume_loop import record as raw_record
from tests.unit.test_consume_loop_faults import (
    TOPIC,
    Faults,
    Relay,
    ScriptedConsumer,
    committed,
    concurrent_loop,
    record,
    running,
)
from tests.unit.test_telemetry import Exploding

pytestmark = pytest.mark.unit

OUT = "t.task-events.v1"  # where the handler publishes (Faults.write)
# a handled, bad's handler fails, an undecodable record, a again (a duplicate), b handled
RECORDS = [
    record(0, "a"),
    record(1, "bad"),
    raw_record(2, b"\xff not json", [("ce_type", b"x")], topic=TOPIC),
    record(3, "a"),
    record(4, "b"),
]


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counters(service: str) -> dict[str, float]:
    """This service's message counters, and what the relay published to its topics."""
    where = {"service": service, "topic": TOPIC}

    def dead(reason: str, error_type: str) -> float:
        labels = {**where, "reason": reason, "error_type": error_type}
        return sample("podium_dead_letters_total", labels)

    return {
        "consumed": sample("podium_messages_total", where),
        "duplicates": sample("podium_messages_duplicate_total", where),
        "dead_lettered:undecodable": dead("undecodable", "UndecodableMessage"),
        "dead_lettered:processing_error": dead("processing_error", "ValueError"),
        "published": sample("podium_messages_published_total", {"topic": OUT})
        + sample("podium_messages_published_total", {"topic": f"{TOPIC}.dlq"}),
    }


@pytest.fixture
def tracing(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    mode: str = request.param
    telemetry.shutdown()
    if mode == "on":
        telemetry.configure_tracing("svc", tmp_path, exporter=InMemorySpanExporter())
    elif mode == "sampled out":
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        telemetry.configure_tracing(
            "svc", tmp_path, TelemetrySettings(tracing="local"), exporter=InMemorySpanExporter()
        )
    elif mode == "broken":
        # Every span start fails inside the SDK, and the consume hook itself raises.
        telemetry.configure_tracing("svc", tmp_path, processor=Exploding())

        def refuse(*_: object, **__: object) -> None:
            raise RuntimeError("tracing broke")

        monkeypatch.setattr(telemetry, "start_consume", refuse)
    yield mode
    telemetry.shutdown()


async def through_consume_loop(service: str, engine_url: str) -> None:
    consumer = ScriptedConsumer()
    loop = ConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=make_engine(engine_url),
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=Faults(apply=ValueError("handler")).write),
        group="g",
        service=service,
    )
    await loop.process(list(RECORDS))
    assert consumer.commits == [{0: 5}]
    assert (loop.stats.handled, loop.stats.duplicates, loop.stats.dead_lettered) == (2, 1, 2)


async def through_concurrent_loop(service: str, engine_url: str) -> None:
    consumer = ScriptedConsumer(queued=list(RECORDS))
    faults = Faults(apply=ValueError("handler"))
    handler = Handler(apply=faults.write, execute=faults.run)
    loop = concurrent_loop(consumer, make_engine(engine_url), handler, service)
    async with running(loop) as task:
        await committed(consumer, task, 5)
    assert (loop.stats.handled, loop.stats.duplicates, loop.stats.dead_lettered) == (2, 1, 2)


LOOPS = {"ConsumeLoop": through_consume_loop, "ConcurrentConsumeLoop": through_concurrent_loop}


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize("tracing", ["off", "on", "sampled out", "broken"], indirect=True)
def test_tracing_changes_no_counter(loop: str, tracing: str, tmp_path: Path) -> None:
    service = f"metrics-{loop}-{tracing}"  # counters of its own, whatever ran before
    url = f"sqlite:///{tmp_path / 'svc.db'}"
    before = counters(service)

    async def main() -> None:
        await LOOPS[loop](service, url)
        producer = RecordingProducer()
        assert await OutboxRelay(make_engine(url), producer).publish_pending() == 4
        dlq = f"{TOPIC}.dlq"
        assert sorted(topic for topic, _ in producer.sent) == [OUT, OUT, dlq, dlq]

    asyncio.run(main())
    after = counters(service)
    # The same counts in every tracing mode, and the ones the messages call for:
    # the duplicate not consumed, each dead letter under its reason, every row sent.
    assert {k: after[k] - before[k] for k in after} == {
        "consumed": 4,
        "duplicates": 1,
        "dead_lettered:undecodable": 1,
        "dead_lettered:processing_error": 1,
        "published": 4,
    }

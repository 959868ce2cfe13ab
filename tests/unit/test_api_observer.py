"""The api reads topics other services own; the owner dead-letters their poison, so
the api's loop (``dead_letters=False``) skips it: one copy in the DLQ, not two."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from podium_contracts import Event, TaskSubmitted
from podium_shared import ConsumeLoop, Handler, UnitOfWork, make_engine
from podium_shared.db import outbox
from tests.unit.test_consume_loop import RecordingConsumer, Relay, record, submitted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dead_letters", [True, False])
async def test_an_observer_skips_poison_instead_of_dead_lettering_it(
    tmp_path: Path, dead_letters: bool
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    consumer = RecordingConsumer()
    seen: list[str] = []

    def apply(event: Event, _r: None, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        if event.payload.task_id == "bad":
            raise ValueError("the handler refuses it")
        seen.append(event.payload.task_id)

    loop = ConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply),
        group="g",
        service="api",
        dead_letters=dead_letters,
    )
    await loop.process(
        [
            record(0, b"not a cloudevent", []),
            record(1, *submitted("bad")),
            record(2, *submitted("good")),
        ]
    )
    with engine.connect() as c:
        dlq = [r.topic for r in c.execute(sa.select(outbox))]
    assert seen == ["good"]
    assert consumer.commits[-1] == {k: 3 for k in consumer.commits[-1]}  # the loop went on
    if dead_letters:
        assert dlq == ["t.tasks.v1.dlq", "t.tasks.v1.dlq"]
        assert loop.stats.dead_lettered == 2
    else:
        assert dlq == []
        assert loop.stats.dead_lettered == 0
    engine.dispose()

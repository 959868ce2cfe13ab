"""The hostile-input suite of issue 12, short version: a seeded barrage of malformed
records on every consumed topic, over the real broker and the four real services.
After it every service process is alive, a normal task completes, and every record is
accounted for: dead-lettered with its reason, answered on task-events, a documented
drop, or refused by the broker (never entered). The long one is
``podium hostile --count 5000 --seed N`` against a running stack."""

from __future__ import annotations

import pytest

from podium.hostile import CATALOGUE, hello_completes, run_hostile
from podium.stack import Stack

pytestmark = pytest.mark.integration

COUNT = 300
SEED = 12
KINDS = [k.name for k in CATALOGUE]


async def test_every_hostile_record_is_accounted_for_and_every_service_lives(
    stack: Stack,
) -> None:
    report = await run_hostile(stack.settings, COUNT, SEED, kinds=KINDS, timeout_s=60)
    assert report.sent == COUNT
    assert set(report.kinds) == set(KINDS), report.text()
    assert all(p.proc.poll() is None for p in stack.processes), report.text()
    report.alive = await hello_completes(stack.settings, 60)
    assert report.alive, report.text()
    assert report.unaccounted == 0, report.text()
    # The outcomes are the documented ones, not merely some outcome.
    kinds = report.kinds
    assert kinds["duplicate"].dropped, report.text()
    assert kinds["unknown_type"].dead_lettered.keys() == {"unknown_type"}
    assert kinds["unexpected_type"].dead_lettered.keys() == {"unexpected_type"}
    assert kinds["deep"].dead_lettered.keys() <= {"undecodable"}
    # Well-formed, about a task that was never submitted: dead-lettered, not dropped.
    assert kinds["cancel_unknown_task"].dead_lettered.keys() == {"unknown_task"}, report.text()
    assert kinds["orphan_result"].dead_lettered.keys() == {"unknown_task"}, report.text()
    print(report.text())

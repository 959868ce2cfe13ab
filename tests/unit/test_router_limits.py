"""The router's caps on what one task may make it do: step dispatches (first
attempts, retries, fallbacks) and fan-out width. Decisions as tables, the width
against a brute force, load-time refusals naming the file, and the caps applied
by the real service to a SQLite database."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from podium_contracts import StepError, StepRetryScheduled, TaskErrorType, TaskSubmitted
from podium_router.decisions import (
    Dispatch,
    Fail,
    advance,
    decide,
    dispatch_limit,
    dispatches,
    fanout_room,
)
from podium_router.service import Router
from podium_router.settings import Limits, RouterSettings
from podium_router.state import StepStatus
from podium_router.workflows import (
    Workflow,
    WorkflowCatalog,
    WorkflowError,
    limit_problems,
    load_file,
    widest,
)
from podium_shared import Topics
from podium_shared.startup import BadSetting, read_settings
from tests.unit.test_router_decide import NOW, run, step
from tests.unit.test_router_runs import T0, Harness, done

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def wf(*steps: tuple[str, list[str]], name: str = "w") -> Workflow:
    return Workflow.model_validate(
        {"name": name, "steps": [{"id": i, "uses": "echo", "needs": n} for i, n in steps]}
    )


# s -> (a, b, c, d) -> j: four at once
FAN4 = wf(("s", []), *((x, ["s"]) for x in "abcd"), ("j", list("abcd")), name="fan4")


def test_defaults_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RouterSettings().limits() == Limits(max_step_dispatches=1000, max_fanout=100)
    monkeypatch.setenv("PODIUM_ROUTER_MAX_STEP_DISPATCHES", "7")
    monkeypatch.setenv("PODIUM_ROUTER_MAX_FANOUT", "3")
    assert read_settings(RouterSettings).limits() == Limits(7, 3)
    monkeypatch.setenv("PODIUM_ROUTER_MAX_FANOUT", "0")
    with pytest.raises(BadSetting, match=r"^PODIUM_ROUTER_MAX_FANOUT: Input should be"):
        read_settings(RouterSettings)


def test_every_shipped_workflow_fits_the_defaults_with_room_to_spare() -> None:
    catalog = WorkflowCatalog.load(f"{REPO / 'workflows'}:{REPO / 'tests' / 'workflows'}")
    assert max(len(widest(w.steps)) for w in catalog.all()) * 10 <= Limits().max_fanout
    assert max(len(w.steps) for w in catalog.all()) * 10 <= Limits().max_step_dispatches


@pytest.mark.parametrize(
    ("workflow", "width"),
    [
        (wf(("a", [])), 1),
        (wf(("a", []), ("b", ["a"]), ("c", ["b"])), 1),  # a chain
        (FAN4, 4),
        # a -> b, and c beside them: b can run with c after a finished
        (wf(("a", []), ("b", ["a"]), ("c", [])), 2),
        # two chains of three, whose steps can be at any point each: still 2
        (wf(("a1", []), ("a2", ["a1"]), ("a3", ["a2"]), ("b1", []), ("b2", ["b1"])), 2),
        # a wide second wave behind a narrow first one
        (wf(("a", []), ("b", []), *((f"x{i}", ["a", "b"]) for i in range(5))), 5),
    ],
)
def test_widest_is_the_most_steps_that_can_be_in_flight_at_once(
    workflow: Workflow, width: int
) -> None:
    assert len(widest(workflow.steps)) == width


def _brute_width(workflow: Workflow) -> int:
    needs = {s.id: set(s.needs) for s in workflow.steps}

    def ancestors(x: str) -> set[str]:
        out: set[str] = set()
        todo = list(needs[x])
        while todo:
            y = todo.pop()
            if y not in out:
                out.add(y)
                todo.extend(needs[y])
        return out

    before = {x: ancestors(x) for x in needs}
    for size in range(len(needs), 0, -1):
        for group in itertools.combinations(needs, size):
            if all(a not in before[b] for a in group for b in group):
                return size
    raise AssertionError("a workflow has at least one step")


def test_widest_matches_a_brute_force_and_is_an_antichain() -> None:
    rng = random.Random(16)
    for _ in range(300):
        n, p = rng.randint(1, 9), rng.random()
        workflow = wf(
            *((f"s{i}", [f"s{j}" for j in range(i) if rng.random() < p]) for i in range(n))
        )
        found = widest(workflow.steps)
        assert len(found) == _brute_width(workflow), workflow
        needs = {s.id: set(s.needs) for s in workflow.steps}
        for a, b in itertools.permutations(found, 2):
            assert a not in needs[b]  # directly; the size check covers the rest


def test_widest_of_a_long_workflow_is_quick() -> None:
    # 2000 steps in overlapping chains: the pairs "u before v" are walked lazily.
    rng = random.Random(3)
    workflow = wf(
        *(
            (f"s{i}", [f"s{j}" for j in range(max(0, i - 3), i) if rng.random() < 0.5])
            for i in range(2000)
        )
    )
    assert 1 <= len(widest(workflow.steps)) <= 2000


def test_limit_problems_name_the_setting_and_its_value() -> None:
    assert limit_problems(FAN4, Limits(max_step_dispatches=6, max_fanout=4)) == []
    [wide] = limit_problems(FAN4, Limits(max_step_dispatches=6, max_fanout=3))
    assert wide == "4 steps can run at once (a, b, c, d), more than PODIUM_ROUTER_MAX_FANOUT (3)"
    [long] = limit_problems(FAN4, Limits(max_step_dispatches=5, max_fanout=4))
    assert long == "6 steps, more than PODIUM_ROUTER_MAX_STEP_DISPATCHES (5) lets one task dispatch"


def test_a_workflow_over_a_cap_is_refused_at_load_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_text(
        "name: wide\nsteps:\n" + "".join(f"  - id: s{i}\n    uses: echo\n" for i in range(8))
    )
    assert len(load_file(path).steps) == 8  # the defaults let it through
    with pytest.raises(WorkflowError) as err:
        WorkflowCatalog.load(str(tmp_path), Limits(max_fanout=6))
    assert str(err.value) == (
        f"{path}: workflow 'wide': 8 steps can run at once (s0, s1, s2, s3, s4, ...),"
        " more than PODIUM_ROUTER_MAX_FANOUT (6)"
    )


# -- the decisions -----------------------------------------------------------------------------


def test_dispatch_limit() -> None:
    limits = Limits(max_step_dispatches=5)
    assert dispatch_limit(3, 2, limits) is None  # exactly at the cap is allowed
    assert dispatch_limit(5, 0, limits) is None  # nothing more to send
    assert dispatch_limit(4, 2, limits) == (
        "6 step dispatches would exceed PODIUM_ROUTER_MAX_STEP_DISPATCHES (5) for one task;"
        " 4 sent so far"
    )


def test_dispatches_count_every_attempt_and_fanout_counts_open_steps() -> None:
    steps = [
        step("a", StepStatus.COMPLETED, attempts=3),
        step("b", StepStatus.FAILED, attempts=2),  # awaiting recovery: still in flight
        step("c", StepStatus.DISPATCHED),
        step("d", StepStatus.ABANDONED, attempts=4),
    ]
    assert dispatches(steps) == 10
    assert fanout_room(steps, 4) == 2
    assert fanout_room(steps, 1) == 0


def _fan_run() -> Any:
    return run(workflow="fan4", definition=FAN4.model_dump(mode="json", by_alias=True))


def test_runnable_steps_past_the_fanout_wait_for_a_running_one_to_settle() -> None:
    started = [step("s", StepStatus.COMPLETED)]
    first = advance(_fan_run(), started, FAN4, NOW, 60.0, Limits(max_fanout=3))
    assert isinstance(first, Dispatch)
    assert [p.step.id for p in first.steps] == ["a", "b", "c"]
    # three in flight: nothing more until one settles
    running = [*started, *(step(x) for x in "abc")]
    full = advance(_fan_run(), running, FAN4, NOW, 60.0, Limits(max_fanout=3))
    assert isinstance(full, Dispatch) and full.steps == ()
    # a settles: d, held back, goes now
    settled = [*started, step("a", StepStatus.COMPLETED), step("b"), step("c")]
    then = advance(_fan_run(), settled, FAN4, NOW, 60.0, Limits(max_fanout=3))
    assert isinstance(then, Dispatch)
    assert [p.step.id for p in then.steps] == ["d"]


def test_a_dispatch_over_the_cap_fails_the_task_and_sends_nothing() -> None:
    started = [step("s", StepStatus.COMPLETED, attempts=3)]
    # 3 sent; a, b, c, d would make 7 of 6: none of them goes
    over = advance(_fan_run(), started, FAN4, NOW, 60.0, Limits(max_step_dispatches=6))
    assert isinstance(over, Fail)
    assert over.close_steps
    assert over.error.type == TaskErrorType.LIMIT_EXCEEDED == "limit_exceeded"
    assert over.error.message == (
        "7 step dispatches would exceed PODIUM_ROUTER_MAX_STEP_DISPATCHES (6) for one task;"
        " 3 sent so far"
    )
    assert over.error.step_id == "a"
    fits = advance(_fan_run(), started, FAN4, NOW, 60.0, Limits(max_step_dispatches=7))
    assert isinstance(fits, Dispatch) and len(fits.steps) == 4


def test_the_fanout_throttle_counts_only_what_it_sends_against_the_cap() -> None:
    started = [step("s", StepStatus.COMPLETED)]
    # two may go at once and two dispatches remain: those two go, no failure
    out = advance(_fan_run(), started, FAN4, NOW, 60.0, Limits(max_step_dispatches=3, max_fanout=2))
    assert isinstance(out, Dispatch) and [p.step.id for p in out.steps] == ["a", "b"]


def _retry(attempt: int) -> StepRetryScheduled:
    return StepRetryScheduled(
        task_id="t1",
        step_id="a",
        attempt=attempt,
        pool="default",
        due_at=NOW + timedelta(seconds=1),
        error=StepError(type="unavailable", message="down"),
    )


@pytest.mark.parametrize(
    ("attempts_before", "cap", "fails"),
    [(1, 2, False), (2, 2, True), (4, 10, False)],
)
def test_a_retry_over_the_cap_fails_the_task(attempts_before: int, cap: int, fails: bool) -> None:
    steps = [step("a", StepStatus.FAILED, attempts=attempts_before)]
    [action] = decide(
        run(),
        steps,
        _retry(attempts_before + 1),
        now=NOW,
        catalog=WorkflowCatalog([FAN4]),
        default_watch_s=60.0,
        limits=Limits(max_step_dispatches=cap),
    )
    if fails:
        assert isinstance(action, Fail) and action.close_steps
        assert action.error.type == "limit_exceeded" and action.error.step_id == "a"
        assert f"PODIUM_ROUTER_MAX_STEP_DISPATCHES ({cap})" in action.error.message
    else:
        assert type(action).__name__ == "Rewatch"


def test_a_repeated_retry_notice_is_not_counted_twice() -> None:
    steps = [step("a", StepStatus.DISPATCHED, attempts=2)]  # attempt 2 already watched
    [action] = decide(
        run(),
        steps,
        _retry(2),
        now=NOW,
        catalog=WorkflowCatalog([FAN4]),
        default_watch_s=60.0,
        limits=Limits(max_step_dispatches=2),
    )
    assert type(action).__name__ == "Rewatch"


# -- the service, on a real database -------------------------------------------------------------


def test_the_router_holds_back_then_sends_and_fails_at_the_cap(database_url: str) -> None:
    h = Harness(database_url)
    h.router = Router(
        WorkflowCatalog([FAN4]),
        Topics("t"),
        limits=Limits(max_step_dispatches=5, max_fanout=2),
        clock=lambda: T0,
    )
    h.run(h.router.accept_task, TaskSubmitted(task_id="f", workflow="fan4"))
    sent = h.run(h.router.step_completed, done("f", "s", {}))
    assert [m.step_id for _, m in sent] == ["a", "b"]  # two of four: the fan-out cap
    sent = h.run(h.router.step_completed, done("f", "a", {}))
    assert [m.step_id for _, m in sent] == ["c"]
    sent = h.run(h.router.step_completed, done("f", "b", {}))
    assert [m.step_id for _, m in sent] == ["d"]  # 5 of 5 dispatches
    assert h.events("f").count("step_dispatched") == 5
    # c is retried: a sixth dispatch, over the cap
    [(topic, failed)] = h.run(
        h.router.retry_scheduled,
        StepRetryScheduled(
            task_id="f",
            step_id="c",
            attempt=2,
            pool="default",
            due_at=T0,
            error=StepError(type="unavailable", message="down"),
        ),
    )
    assert topic == Topics("t").task_events
    assert type(failed).__name__ == "TaskFailed"
    assert failed.error.type == "limit_exceeded" and failed.error.step_id == "c"
    assert "PODIUM_ROUTER_MAX_STEP_DISPATCHES (5)" in failed.error.message
    assert h.events("f")[-1] == "failed"
    # d's late result changes nothing
    late = h.run(h.router.step_completed, done("f", "d", {}))
    assert late == [] and h.events("f")[-1] == "late_result_ignored"

"""Recovery's caps on retries, whatever a workflow's policy asks: attempts of one
step and retries of one task's steps together. The decision as a table, then the
service on SQLite: the count it reads and the dead letter it writes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_contracts import RetryPolicy, StepAbandoned, StepError, StepFailed, decode
from podium_recovery import Abandon, Recovery, RecoverySettings, Retry, RetryCaps, Why, decide
from podium_recovery.decisions import retry_cap
from podium_recovery.state import failures, metadata
from podium_shared import Topics, UnitOfWork, dlq_headers, make_engine
from podium_shared.db import outbox
from podium_shared.startup import BadSetting, read_settings
from tests.unit.test_recovery_timers import request

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TOPICS = Topics("t")
DEFAULTS = RecoverySettings().default_policy()
GENEROUS = RetryPolicy(max_attempts=100, initial_s=0.1, max_s=1.0)


def failure(
    attempt: int, step_id: str = "s1", policy: RetryPolicy = GENEROUS, task_id: str = "t1"
) -> StepFailed:
    return StepFailed.for_step(
        request(attempt, retry=policy).model_copy(update={"step_id": step_id, "task_id": task_id}),
        error=StepError(type="unavailable", message="down", error_class="retryable"),
        duration_ms=1.0,
    )


def test_defaults_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RecoverySettings().caps() == RetryCaps(max_attempts=10, max_task_retries=100)
    monkeypatch.setenv("PODIUM_RECOVERY_MAX_ATTEMPTS_CAP", "4")
    monkeypatch.setenv("PODIUM_RECOVERY_MAX_TASK_RETRIES", "0")
    assert read_settings(RecoverySettings).caps() == RetryCaps(4, 0)
    # the default policy may not ask for more than the cap allows
    monkeypatch.setenv("PODIUM_RECOVERY_MAX_ATTEMPTS", "5")
    with pytest.raises(
        BadSetting,
        match=r"PODIUM_RECOVERY_MAX_ATTEMPTS \(5\) is over PODIUM_RECOVERY_MAX_ATTEMPTS_CAP \(4\)",
    ):
        read_settings(RecoverySettings)
    monkeypatch.setenv("PODIUM_RECOVERY_MAX_ATTEMPTS_CAP", "101")
    with pytest.raises(BadSetting, match=r"^PODIUM_RECOVERY_MAX_ATTEMPTS_CAP: Input should be"):
        read_settings(RecoverySettings)


@pytest.mark.parametrize(
    ("attempt", "task_retries", "expected"),
    [
        (1, 0, None),
        (9, 98, None),  # the last attempt and the last retry the caps allow
        (10, 0, "its policy allows 100, PODIUM_RECOVERY_MAX_ATTEMPTS_CAP is 10"),
        (
            3,
            100,
            "the task's steps were retried 100 time(s), PODIUM_RECOVERY_MAX_TASK_RETRIES is 100",
        ),
    ],
)
def test_retry_cap(attempt: int, task_retries: int, expected: str | None) -> None:
    assert retry_cap(attempt, 100, task_retries, RetryCaps()) == expected


def test_a_step_past_the_attempts_cap_is_abandoned_naming_it() -> None:
    rng = random.Random(1)
    caps = RetryCaps(max_attempts=3)
    assert isinstance(decide(failure(2), DEFAULTS, NOW, rng, caps=caps), Retry)
    capped = decide(failure(3), DEFAULTS, NOW, rng, caps=caps)
    assert capped == Abandon(
        Why.LIMIT, 3, "its policy allows 100, PODIUM_RECOVERY_MAX_ATTEMPTS_CAP is 3"
    )
    assert capped.detail == (
        "3 attempt(s) failed; its policy allows 100, PODIUM_RECOVERY_MAX_ATTEMPTS_CAP is 3"
    )
    # a policy within the cap ends as it always did
    three = RetryPolicy(max_attempts=3)
    assert decide(failure(3, policy=three), DEFAULTS, NOW, rng, caps=caps) == Abandon(
        Why.EXHAUSTED, 3
    )


def test_a_task_past_its_retries_is_abandoned_naming_the_cap() -> None:
    rng = random.Random(1)
    caps = RetryCaps(max_task_retries=2)
    assert isinstance(decide(failure(1), DEFAULTS, NOW, rng, caps=caps, task_retries=1), Retry)
    capped = decide(failure(1), DEFAULTS, NOW, rng, caps=caps, task_retries=2)
    assert isinstance(capped, Abandon) and capped.why is Why.LIMIT
    assert "PODIUM_RECOVERY_MAX_TASK_RETRIES is 2" in capped.detail


def test_a_fatal_error_is_still_fatal_past_a_cap() -> None:
    fatal = StepFailed.for_step(
        request(5, retry=GENEROUS),
        error=StepError(type="capability_error", message="no", error_class="fatal"),
        duration_ms=1.0,
    )
    decision = decide(fatal, DEFAULTS, NOW, random.Random(1), caps=RetryCaps(max_attempts=2))
    assert decision == Abandon(Why.FATAL, 5)


# -- the service, on SQLite ----------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'recovery.db'}", metadata)
    yield e
    e.dispose()


def handle(engine: Engine, recovery: Recovery, f: StepFailed) -> object:
    with engine.begin() as conn:
        uow = UnitOfWork(conn, source="recovery")
        decision = recovery.step_failed(f, uow)
        uow.flush()
    return decision


def test_the_service_counts_a_tasks_retries_across_its_steps_and_dead_letters(
    engine: Engine,
) -> None:
    settings = RecoverySettings(max_task_retries=2)
    recovery = Recovery(TOPICS, settings, clock=lambda: NOW, rng=random.Random(3))
    assert isinstance(handle(engine, recovery, failure(1, "a")), Retry)
    assert isinstance(handle(engine, recovery, failure(1, "b")), Retry)
    # another task's retries are its own
    assert isinstance(handle(engine, recovery, failure(1, "a", task_id="t2")), Retry)
    decision = handle(engine, recovery, failure(2, "a"))
    assert isinstance(decision, Abandon) and decision.why is Why.LIMIT

    with engine.connect() as conn:
        dlq, abandoned = conn.execute(sa.select(outbox).order_by(outbox.c.id)).all()[-2:]
        row = conn.execute(sa.select(failures).order_by(failures.c.id.desc()).limit(1)).one()
    meta = dlq_headers([(k, v.encode("latin-1")) for k, v in dlq.headers])
    assert meta["reason"] == "step_abandoned" and meta["abandoned"] == "limit"
    assert meta["task-id"] == "t1" and meta["step-id"] == "a" and meta["attempts"] == "2"
    event = decode(abandoned.value, [(k, v.encode("latin-1")) for k, v in abandoned.headers])
    assert isinstance(event.payload, StepAbandoned)
    assert event.payload.error.message == (
        "down (2 attempt(s) failed; the task's steps were retried 2 time(s),"
        " PODIUM_RECOVERY_MAX_TASK_RETRIES is 2)"
    )
    assert (row.decision, row.detail) == ("abandon", decision.detail)

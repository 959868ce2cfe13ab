"""A new SQLite connection waits out "database is locked" while it switches the
file to WAL: replicas opening one ledger together get that answer at once,
without SQLite's busy handler (CI: eight executors of the scaling bench)."""

from __future__ import annotations

import sqlite3

import pytest

from podium_shared import db


class _Cursor:
    def __init__(self, failures: int, message: str = "database is locked") -> None:
        self.failures = failures
        self.message = message
        self.calls = 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError(self.message)


def test_a_locked_file_is_tried_again_until_it_switches() -> None:
    cursor = _Cursor(failures=3)
    db._switch_to_wal(cursor)
    assert cursor.calls == 4


def test_another_error_is_not_retried() -> None:
    cursor = _Cursor(failures=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        db._switch_to_wal(cursor)
    assert cursor.calls == 1


def test_a_file_locked_past_the_deadline_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "_WAL_SWITCH_DEADLINE_S", 0.05)
    cursor = _Cursor(failures=10_000)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db._switch_to_wal(cursor)
    assert cursor.calls > 1

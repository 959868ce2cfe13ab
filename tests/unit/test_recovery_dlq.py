"""The DLQ operator's pure parts: record fields, filters, summaries, replay plans."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from podium_contracts import DLQ_HEADER_PREFIX
from podium_shared.blobs import FolderStore
from podium_shared.dlq import fit
from podium_shared.dlq_records import DlqRecord, summarize
from podium_shared.dlq_replay import Filters, parse_since, plan_replay, replay, select

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def record(
    offset: int,
    *,
    reason: str = "step_abandoned",
    error_type: str = "unavailable",
    error_class: str | None = "retryable",
    task: str | None = "t1",
    ce_id: str | None = None,
    minutes: int = 0,
    original: str | None = "p.steps.default.v1",
    value: bytes | None = b'{"task_id": "t1"}',
) -> DlqRecord:
    meta = {
        "reason": reason,
        "error-type": error_type,
        "time": (T0 + timedelta(minutes=minutes)).isoformat(),
    }
    if error_class:
        meta["error-class"] = error_class
    if task:
        meta["task-id"] = task
    if original:
        meta["original-topic"] = original
    headers = [("ce_id", (ce_id or f"id{offset}").encode()), ("x-app", b"1")]
    headers += [(DLQ_HEADER_PREFIX + k, v.encode()) for k, v in meta.items()]
    return DlqRecord("p.steps.default.v1.dlq", 0, offset, 0, b"k", value, headers)


def test_a_record_exposes_its_id_meta_and_original_headers() -> None:
    r = record(3, ce_id="abc")
    assert r.id == "abc" and r.locator == "0:3"
    assert r.meta["reason"] == "step_abandoned" and r.time == T0
    assert r.original_headers() == [("ce_id", b"abc"), ("x-app", b"1")]
    d = r.as_dict()
    assert d["payload"] == {"task_id": "t1"} and d["error_class"] == "retryable"


def test_poison_without_ce_id_or_json_is_still_addressable() -> None:
    r = DlqRecord(
        "p.tasks.v1.dlq",
        2,
        9,
        1_700_000_000_000,
        None,
        b"{not json",
        [("podium-dlq-reason", b"undecodable")],
    )
    assert r.id == "2:9" and r.task_id is None and r.payload() is None
    assert r.as_dict()["value"] == "{not json"
    assert r.time == datetime.fromtimestamp(1_700_000_000, UTC)  # no dlq time: the record's


def test_the_task_id_comes_from_the_payload_when_no_header_names_it() -> None:
    structured = orjson.dumps({"specversion": "1.0", "data": {"task_id": "t9"}})
    assert record(1, task=None, value=b'{"task_id": "t7"}').task_id == "t7"
    assert record(1, task=None, value=structured).task_id == "t9"


def test_filters_combine_and_limit_keeps_the_oldest() -> None:
    records = [
        record(0, error_type="timeout", minutes=0),
        record(1, error_type="unavailable", minutes=5, task="t2"),
        record(2, error_type="unavailable", minutes=10),
        record(3, reason="invalid", error_type="InvalidMessage", error_class=None, minutes=15),
    ]
    assert [r.offset for r in select(records, Filters(error_type="unavailable"))] == [1, 2]
    assert [r.offset for r in select(records, Filters(error_type="retryable"))] == [0, 1, 2]
    assert [r.offset for r in select(records, Filters(error_type="invalid"))] == [3]
    since = Filters(since=T0 + timedelta(minutes=5))
    assert [r.offset for r in select(records, since)] == [1, 2, 3]
    assert [r.offset for r in select(records, Filters(task="t2"))] == [1]
    assert [r.offset for r in select(records, Filters(ids=frozenset({"id2", "0:0"})))] == [0, 2]
    assert [r.offset for r in select(records, Filters(limit=2))] == [0, 1]
    assert select(records, Filters(error_type="unavailable", task="t1", limit=5))[0].offset == 2


def test_since_takes_a_time_or_an_age() -> None:
    now = T0
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("1.5h", now) == now - timedelta(hours=1.5)
    assert parse_since("2026-11-01T11:00:00Z", now) == T0 - timedelta(hours=1)
    assert parse_since("2026-11-01T11:00:00", now).tzinfo == UTC
    with pytest.raises(ValueError, match="neither a time"):
        parse_since("yesterday", now)


def test_a_summary_counts_and_groups_by_reason_class_and_type() -> None:
    records = [record(0), record(1, minutes=3), record(2, error_type="timeout", minutes=1)]
    s = summarize("x.dlq", records)
    assert (s["count"], s["oldest"], s["newest"]) == (
        3,
        T0.isoformat(),
        (T0 + timedelta(minutes=3)).isoformat(),
    )
    assert s["groups"] == [
        {
            "reason": "step_abandoned",
            "error_class": "retryable",
            "error_type": "unavailable",
            "count": 2,
        },
        {
            "reason": "step_abandoned",
            "error_class": "retryable",
            "error_type": "timeout",
            "count": 1,
        },
    ]
    assert summarize("empty.dlq", [])["oldest"] is None


def test_the_replay_plan_skips_finished_tasks_repeats_and_records_with_nowhere_to_go() -> None:
    records = [
        record(0, task="done"),
        record(1, task="open"),
        record(2, task="open", ce_id="id1"),  # the relay sent the same DLQ record twice
        record(3, task="gone"),
        record(4, task=None, original=None, value=b"x"),
        record(5, task="unknown"),
    ]
    states = {"done": "completed", "open": "failed", "gone": "cancelled"}
    sends, skipped = plan_replay(records, states, to=None)
    assert [(r.offset, t) for r, t in sends] == [
        (1, "p.steps.default.v1"),
        (5, "p.steps.default.v1"),
    ]
    assert {s["offset"]: s["why"] for s in skipped} == {
        "0:0": "task already completed",
        "0:2": "same ce_id as a record replayed in this run",
        "0:3": "task was cancelled",
        "0:4": "no podium-dlq-original-topic header (give --to)",
    }
    sends, _ = plan_replay(records[4:], {}, to="scratch")
    assert [(r.offset, t) for r, t in sends] == [(4, "scratch"), (5, "scratch")]


async def test_replay_sends_bodies_kept_aside_and_tombstones_as_they_were(tmp_path: Path) -> None:
    """A DLQ copy that kept its body in the blob store is replayed as the original
    record, not as the stub; a tombstone with a key as a tombstone; one with neither
    key nor value (which aiokafka refuses) is skipped, saying why."""
    store = FolderStore(tmp_path / "blobs")
    body = b"z" * (2 * 1024 * 1024)
    meta = {"reason": "undecodable", "original-topic": "p.tasks.v1"}
    copies = [
        fit("p.tasks.v1.dlq", b"big", body, [("ce_id", b"a")], meta, store=store),
        fit("p.tasks.v1.dlq", b"gone", None, [("ce_id", b"b")], meta, store=store),
        fit("p.tasks.v1.dlq", None, None, [("ce_id", b"c")], meta, store=store),
    ]
    records = [DlqRecord(c.topic, 0, i, 0, c.key, c.value, c.headers) for i, c in enumerate(copies)]
    sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    class Producer:
        async def send(self, topic: str, value: Any, key: Any, headers: Any) -> Any:
            sent.append((topic, key, value, headers))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    report = await replay(Producer(), "p.tasks.v1.dlq", records, states={})  # type: ignore[arg-type]
    assert sent == [
        ("p.tasks.v1", b"big", body, [("ce_id", b"a")]),
        ("p.tasks.v1", b"gone", None, [("ce_id", b"b")]),
    ]
    assert [s["why"] for s in report.skipped] == [
        "a record with neither key nor value, which this client cannot send"
    ]

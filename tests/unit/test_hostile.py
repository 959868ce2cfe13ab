"""The hostile-record generator: seeded, covering every kind on every topic it reads."""

from __future__ import annotations

import pytest

from podium.hostile import CATALOGUE, HOSTILE_IDS, Hostile, consumed_topics, generate
from podium_shared import Topics

pytestmark = pytest.mark.unit

TOPICS = Topics("p")


def _content(records: list[Hostile]) -> list[tuple[object, ...]]:
    """All but the ce_ids, which are fresh in every run."""
    return [
        (r.kind, r.topic, r.key, r.value, [h for h in r.headers if h[0] != "ce_id"])
        for r in records
    ]


def test_the_same_seed_makes_the_same_records_and_another_seed_others() -> None:
    assert _content(generate(TOPICS, 500, 7, run="r")) == _content(
        generate(TOPICS, 500, 7, run="r")
    )
    assert _content(generate(TOPICS, 500, 7, run="r")) != _content(
        generate(TOPICS, 500, 8, run="r")
    )


def test_a_second_run_is_not_a_duplicate_of_the_first() -> None:
    first, second = generate(TOPICS, 300, 7), generate(TOPICS, 300, 7)
    # Every ce_id is new, but for a duplicate's, which repeats its first copy's.
    ids = [
        {v for k, v in r.headers if k == "ce_id"} for r in first + second if r.duplicate_of is None
    ]
    assert len(set().union(*ids)) == sum(len(i) for i in ids)
    tasks = {t for r in first if r.kind == "hostile_id" for t in r.task_ids}
    assert tasks.isdisjoint(t for r in second for t in r.task_ids)


def test_a_short_run_covers_every_kind_every_topic_and_every_hostile_id() -> None:
    records = generate(TOPICS, 300, 12)
    assert len(records) == 300
    assert {r.kind for r in records} == {k.name for k in CATALOGUE}
    assert {r.topic for r in records} == set(consumed_topics(TOPICS))
    ids = [r.task_ids[0] for r in records if r.kind == "hostile_id"]
    assert len(ids) >= len(HOSTILE_IDS) and len(set(ids)) == len(ids)
    assert {len(i) for i in ids} >= {200, 201}  # the longest legal id, and one more


def test_large_records_are_capped_and_a_duplicate_repeats_its_first_copy() -> None:
    records = generate(TOPICS, 3000, 1)
    assert sum(r.kind == "ten_mib" for r in records) == 1
    assert sum(r.kind == "one_mib" for r in records) <= 6
    dups = [r for r in records if r.duplicate_of is not None]
    assert dups
    for d in dups:
        first = records[d.duplicate_of]  # type: ignore[index]
        assert (first.key, first.value, first.headers) == (d.key, d.value, d.headers)

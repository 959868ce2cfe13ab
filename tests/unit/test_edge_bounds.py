"""The decoder's edge: JSON depth, header keys that are not UTF-8, and which
contracts each topic carries (pure functions, no broker)."""

from __future__ import annotations

import orjson
import pytest

from podium_contracts import (
    MAX_JSON_DEPTH,
    REGISTRY,
    StepCompleted,
    TaskSubmitted,
    UndecodableMessage,
    UnexpectedContract,
    UnknownContract,
    decode,
    encode,
)
from podium_contracts.asyncapi import CHANNELS, carried_by
from podium_contracts.envelope import json_depth_exceeds
from podium_shared import Topics
from podium_shared.settle import describe, printable_key

pytestmark = pytest.mark.unit


def nested(depth: int) -> bytes:
    """A JSON object (the task) whose input nests to ``depth`` levels in all."""
    inner = b"[" * (depth - 2) + b"0" + b"]" * (depth - 2)
    return b'{"task_id": "t", "workflow": "w", "input": {"x": %s}}' % inner


def test_depth_is_measured_without_recursion_and_exactly() -> None:
    assert not json_depth_exceeds(b"{}", {})
    for depth in (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000):
        value = nested(depth)
        assert json_depth_exceeds(value, orjson.loads(value)) is (depth > MAX_JSON_DEPTH)
    # Many brackets, all shallow: the walk, not the bracket count, decides.
    wide = orjson.dumps({"a": [[1]] * 500})
    assert not json_depth_exceeds(wide, orjson.loads(wide))


def test_the_depth_bound_is_below_what_orjson_can_write_back() -> None:
    deepest: object = 0
    for _ in range(MAX_JSON_DEPTH * 3):  # the payload inside three more envelopes
        deepest = [deepest]
    orjson.dumps(deepest)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000])
def test_decode_refuses_a_payload_nested_too_deep(depth: int) -> None:
    _, headers = encode(TaskSubmitted(task_id="t", workflow="w"), source="s")
    with pytest.raises(UndecodableMessage, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        decode(nested(depth), headers)
    assert decode(nested(MAX_JSON_DEPTH), headers).payload.task_id == "t"  # type: ignore[attr-defined]


def test_decode_refuses_a_header_key_that_was_not_utf8() -> None:
    value, headers = encode(TaskSubmitted(task_id="t", workflow="w"), source="s")
    bad = b"\xff-key".decode("utf-8", "surrogateescape")  # as podium_shared.records reads it
    with pytest.raises(UndecodableMessage, match=r"header key b'\\xff-key' is not UTF-8"):
        decode(value, [*headers, (bad, b"v")])
    assert decode(value, [*headers, ("clé", b"v")]).envelope.id  # non-ASCII UTF-8 is fine
    assert printable_key(bad) == "\\xff-key" and printable_key("clé") == "clé"


def test_decode_refuses_a_known_contract_its_topic_does_not_carry() -> None:
    value, headers = encode(TaskSubmitted(task_id="t", workflow="w"), source="s")
    with pytest.raises(UnexpectedContract, match="not carried by this topic") as refused:
        decode(value, headers, accepts=Topics().carries("podium.step-results.v1"))
    assert refused.value.reason == "unexpected_type"
    assert decode(value, headers, accepts=Topics().carries("podium.tasks.v1")).envelope.id
    _, v9 = encode(TaskSubmitted(task_id="t", workflow="w"), source="s")
    v9 = [(k, b"podium.task.submitted.v9" if k == "ce_type" else v) for k, v in v9]
    with pytest.raises(UnknownContract):  # unknown stays unknown, whatever the topic
        decode(value, v9, accepts=Topics().carries("podium.tasks.v1"))


def test_every_topic_carries_what_its_channel_declares() -> None:
    topics = Topics("acme.prod")
    assert topics.carries(topics.tasks) == {
        "podium.task.submitted.v1",
        "podium.task.cancel-requested.v1",
    }
    assert StepCompleted.CE_TYPE in topics.carries(topics.step_results)
    assert topics.carries(topics.steps("gpu-2")) == {"podium.step.requested.v1"}
    assert topics.carries(topics.dlq(topics.tasks)) == frozenset()
    assert topics.carries("podium.tasks.v1") == frozenset()  # another prefix's topic
    assert topics.carries("acme.prod.steps.a.b.v1") == frozenset()  # not a pool name
    assert sorted(t for ch in CHANNELS for t in carried_by(ch.address.replace("{pool}", "p"))) == (
        sorted(REGISTRY)
    )


def test_describe_never_raises() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RecursionError

    assert describe(ValueError("plain")) == "plain"
    assert "could not be rendered" in describe(Unprintable())

"""Mixed versions on the wire: for every contract and every change the breaking-change
checker allows, a v1 reader reads what the newer writer sends and the newer reader reads
what a v1 writer sent, through the real codec. A future major version is another type: a
v1 reader refuses it with the reason the consumer dead-letters it under, and the upgrade
reads it (tests/integration/test_contract_versions.py does both over the real router)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from pydantic import Field, create_model

from podium_contracts import (
    ALL_CONTRACTS,
    Contract,
    ContractError,
    InvalidMessage,
    TaskSubmitted,
    UnknownContract,
    decode,
    encode,
)
from podium_contracts.compat import breaking_changes
from podium_contracts.envelope import REGISTRY
from podium_contracts.schemas import render_schema
from tests.support.contracts_v2 import TaskSubmittedFromV2, TaskSubmittedV2, WorkflowRef, install
from tests.unit.test_contracts import EXAMPLES

pytestmark = pytest.mark.unit

Change = Callable[[type[Contract], Contract], tuple[type[Contract], dict[str, Any]]]


def _required(model: type[Contract]) -> list[str]:
    return [name for name, f in model.model_fields.items() if f.is_required()]


def new_field_with_a_default(
    model: type[Contract], example: Contract
) -> tuple[type[Contract], dict[str, Any]]:
    newer: type[Contract] = create_model(
        model.__name__,
        __base__=model,
        origin_region=(str, "eu-west"),
        labels=(dict[str, str], Field(default_factory=dict)),
    )
    return newer, {"origin_region": "us-east", "labels": {"team": "billing"}}


def required_fields_get_defaults(
    model: type[Contract], example: Contract
) -> tuple[type[Contract], dict[str, Any]]:
    fields: dict[str, Any] = {
        name: (model.model_fields[name].annotation, getattr(example, name))
        for name in _required(model)
    }
    return create_model(model.__name__, __base__=model, **fields), {}


def a_better_description(
    model: type[Contract], example: Contract
) -> tuple[type[Contract], dict[str, Any]]:
    name, field = next(iter(model.model_fields.items()))
    default: Any = ... if field.is_required() else field.get_default(call_default_factory=True)
    described: Any = (field.annotation, Field(default, description=f"{name}, said better"))
    return create_model(model.__name__, __base__=model, **{name: described}), {}


ALLOWED: list[Change] = [
    new_field_with_a_default,
    required_fields_get_defaults,
    a_better_description,
]
CASES = [(m, c) for m in ALL_CONTRACTS for c in ALLOWED]


def _id(case: tuple[type[Contract], Change]) -> str:
    return f"{case[0].CE_TYPE}-{case[1].__name__}"


def _same_fields(payload: Contract, example: Contract) -> None:
    assert {k: getattr(payload, k) for k in type(example).model_fields} == dict(example)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_a_v1_reader_and_a_newer_writer_work_together(
    case: tuple[type[Contract], Change],
) -> None:
    model, change = case
    example = EXAMPLES[model]
    newer, added = change(model, example)
    assert breaking_changes(render_schema(model), render_schema(newer)) == []

    # The newer writer's message, read by today's (v1) reader.
    sent = newer.model_validate({**example.model_dump(), **added})
    value, headers = encode(sent, source="newer-writer")
    read = decode(value, headers)
    assert type(read.payload) is model and read.envelope.type == model.CE_TYPE
    _same_fields(read.payload, example)

    # A v1 writer's message, read by the newer reader.
    value, headers = encode(example, source="v1-writer")
    read = decode(value, headers, registry={model.CE_TYPE: newer})
    _same_fields(read.payload, example)


def test_a_new_contract_is_unknown_to_a_v1_reader_and_reads_after_the_upgrade() -> None:
    class TaskPaused(Contract):
        CE_TYPE: ClassVar[str] = "podium.task.paused.v1"
        task_id: str

    value, headers = encode(TaskPaused(task_id="t-1"), source="newer-writer")
    with pytest.raises(UnknownContract, match=r"podium\.task\.paused\.v1") as refused:
        decode(value, headers)
    assert refused.value.reason == "unknown_type"
    upgraded: dict[str, type[Contract]] = {**REGISTRY, TaskPaused.CE_TYPE: TaskPaused}
    assert decode(value, headers, registry=upgraded).payload == TaskPaused(task_id="t-1")


def test_a_change_the_checker_refuses_breaks_a_reader() -> None:
    # The control: the round trips above can fail, and do for a breaking change.
    newer = create_model("TaskSubmitted", __base__=TaskSubmitted, region=(str, ...))
    assert breaking_changes(render_schema(TaskSubmitted), render_schema(newer)) == [
        "region: new required field (give it a default)"
    ]
    value, headers = encode(EXAMPLES[TaskSubmitted], source="v1-writer")
    with pytest.raises(InvalidMessage, match="region: Field required"):
        decode(value, headers, registry={TaskSubmitted.CE_TYPE: newer})


V2 = TaskSubmittedV2(
    task_id="inv-2026-0042", workflow=WorkflowRef(name="hello", version=1), input={"text": "hi"}
)


def test_v2_is_a_breaking_change_of_v1() -> None:
    problems = breaking_changes(render_schema(TaskSubmitted), render_schema(TaskSubmittedV2))
    assert "x-ce-type changed from 'podium.task.submitted.v1' to 'podium.task.submitted.v2'" in (
        problems
    )
    assert any(p.startswith("workflow: type changed") for p in problems)


def test_a_future_major_version_is_refused_by_a_v1_reader_with_the_dlq_reason() -> None:
    value, headers = encode(V2, source="v2-writer")
    with pytest.raises(ContractError) as refused:
        decode(value, headers)
    assert isinstance(refused.value, UnknownContract)
    assert refused.value.reason == "unknown_type"
    assert str(refused.value) == "unknown ce_type 'podium.task.submitted.v2'"


def test_after_the_upgrade_v2_reads_as_the_v1_model_the_service_handles() -> None:
    registry = dict(REGISTRY)
    install(registry)
    value, headers = encode(V2, source="v2-writer")
    read = decode(value, headers, registry=registry)
    assert isinstance(read.payload, TaskSubmitted) and type(read.payload) is TaskSubmittedFromV2
    assert read.envelope.type == "podium.task.submitted.v2"
    assert (read.payload.workflow, read.payload.workflow_version) == ("hello", 1)
    assert read.payload.input == {"text": "hi"}
    # v1 messages still read the same after the upgrade.
    value, headers = encode(EXAMPLES[TaskSubmitted], source="v1-writer")
    assert decode(value, headers, registry=registry).payload == EXAMPLES[TaskSubmitted]

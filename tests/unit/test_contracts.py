"""Contracts: generated artefacts in step with the models, compatibility with
the checked-in schemas, the CloudEvents codec and its error tree, the topic
table in step with podium_shared, and the public names."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import podium_contracts
from podium_contracts import (
    ALL_CONTRACTS,
    REGISTRY,
    BreakerStatus,
    Budget,
    Contract,
    ContractError,
    DlqHeader,
    DlqLocation,
    DlqReason,
    InvalidMessage,
    PlannedStep,
    PoolStatusReported,
    RateLimitStatus,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    StepSummary,
    TaskAccepted,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskError,
    TaskFailed,
    TaskHistoryRecorded,
    TaskRejected,
    TaskSubmitted,
    UndecodableMessage,
    UnknownContract,
    Usage,
    asyncapi,
    decode,
    decode_record,
    encode,
    json_depth,
    schemas,
)
from podium_contracts.compat import breaking_changes
from podium_shared import Topics, dlq_headers
from podium_shared.dlq import dead_letter

pytestmark = pytest.mark.unit

REGENERATE = "regenerate with `uv run python -m podium_contracts.schemas` (make schemas)"
T0 = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
T1 = datetime(2026, 3, 14, 9, 27, 1, 250000, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

_REQUEST = StepRequested(
    task_id="inv-2026-0042",
    step_id="summarise",
    workflow="invoice-triage",
    capability="llm.complete",
    pool="default",
    input={"prompt": "Summarise the invoice in one line.", "invoice": {"total": 1280.5}},
    attempt=2,
    idempotency_key="inv-2026-0042/summarise",
    tenant="acme",
    subject="user-17",
    timeout_s=30.0,
)
_ERROR = StepError(type="rate_limited", message="429 from provider", error_class="retryable")
_SUMMARY = StepSummary(
    step_id="extract", capability="echo", pool="default", attempts=1, duration_ms=3.2
)

# One realistic payload per contract; a new contract without one fails below.
EXAMPLES: dict[type[Contract], Contract] = {
    TaskSubmitted: TaskSubmitted(
        task_id="inv-2026-0042",
        workflow="invoice-triage",
        input={"invoice_url": "s3://invoices/0042.pdf", "lines": [1, 2, 3]},
        tenant="acme",
        subject="user-17",
        priority=5,
        deadline=T1,
        budget=Budget(max_cost_usd=0.25, max_tokens=20_000),
        metadata={"origin": "billing-service", "ticket": "OPS-9"},
    ),
    TaskAccepted: TaskAccepted(
        task_id="inv-2026-0042",
        workflow="invoice-triage",
        workflow_version=3,
        accepted_at=T0,
        steps=[
            PlannedStep(step_id="extract", capability="echo"),
            PlannedStep(step_id="summarise", capability="llm.complete", depends_on=["extract"]),
        ],
    ),
    TaskHistoryRecorded: TaskHistoryRecorded(
        task_id="inv-2026-0042",
        at=T0,
        kind="retry_scheduled",
        step_id="summarise",
        attempt=2,
        pool="default",
        capability="llm.complete",
        cause="attempt 1 failed: rate_limited: 429 from provider",
        next="attempt 2 on pool default in 1.0s",
    ),
    TaskCompleted: TaskCompleted(
        task_id="inv-2026-0042",
        workflow="invoice-triage",
        output={"summary": "Office chairs, 1,280.50 EUR", "route": "approve", "score": 0.93},
        steps=[
            _SUMMARY,
            StepSummary(
                step_id="summarise",
                capability="llm.complete",
                pool="default",
                attempts=2,
                duration_ms=812.4,
            ),
        ],
        usage=Usage(cost_usd=0.0031, prompt_tokens=812, completion_tokens=64),
        accepted_at=T0,
        completed_at=T1,
    ),
    TaskFailed: TaskFailed(
        task_id="inv-2026-0042",
        workflow="invoice-triage",
        error=TaskError(
            type="step_abandoned", message="summarise: 429 from provider", step_id="summarise"
        ),
        dlq=DlqLocation(topic="podium.steps.default.v1.dlq", record_id="9a8b7c6d5e4f"),
        usage=Usage(cost_usd=0.001, prompt_tokens=100, completion_tokens=0),
        failed_at=T1,
    ),
    TaskRejected: TaskRejected(
        task_id="inv-2026-0042",
        workflow="invoice-triage",
        error=TaskError(
            type="invalid",
            message="podium.task.submitted.v1: priority: Input should be less than or equal "
            "to 2147483647 (1 error(s))",
        ),
        dlq=DlqLocation(topic="podium.tasks.v1.dlq", record_id="3f1c6d0a9b2e"),
        rejected_at=T1,
    ),
    StepRequested: _REQUEST,
    StepCompleted: StepCompleted(
        task_id="inv-2026-0042",
        step_id="summarise",
        capability="llm.complete",
        pool="default",
        output={"text": "Office chairs, 1,280.50 EUR"},
        attempt=2,
        duration_ms=812.4,
        usage=Usage(cost_usd=0.0031, prompt_tokens=812, completion_tokens=64),
    ),
    StepFailed: StepFailed(
        task_id="inv-2026-0042",
        step_id="summarise",
        capability="llm.complete",
        pool="default",
        attempt=2,
        error=_ERROR,
        duration_ms=120.0,
        request=_REQUEST,
    ),
    StepAbandoned: StepAbandoned(
        task_id="inv-2026-0042",
        step_id="summarise",
        attempts=5,
        error=_ERROR,
        dlq=DlqLocation(topic="podium.steps.default.v1.dlq", record_id="9a8b7c6d5e4f"),
    ),
    TaskCancelRequested: TaskCancelRequested(task_id="inv-2026-0042", reason="customer withdrew"),
    TaskCancelled: TaskCancelled(
        task_id="inv-2026-0042",
        workflow="invoice-triage",
        reason="customer withdrew",
        cancelled_at=datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC),
    ),
    StepRetryScheduled: StepRetryScheduled(
        task_id="inv-2026-0042",
        step_id="classify",
        attempt=2,
        pool="backup",
        model="small-model",
        due_at=datetime(2026, 11, 23, 10, 0, 7, tzinfo=UTC),
        error=StepError(type="rate_limited", message="429", error_class="retryable"),
    ),
    PoolStatusReported: PoolStatusReported(
        pool="default",
        replica="host-1/executor-default-4242",
        concurrency=16,
        breakers={"openai": BreakerStatus(state="open", failures=5, retry_in_s=12.5)},
        rate_limit=RateLimitStatus(per_s=20.0, burst=40),
        interval_s=10.0,
        reported_at=datetime(2026, 11, 23, 10, 0, 8, tzinfo=UTC),
    ),
}


def _ids(model: type[Contract]) -> str:
    return model.CE_TYPE


def _binary_headers(
    ce_type: str = "podium.task.submitted.v1", **override: bytes | None
) -> list[tuple[str, bytes | None]]:
    headers: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": b"abc123",
        "ce_type": ce_type.encode(),
        "ce_source": b"billing-service",
        "ce_time": b"2026-03-14T09:26:53.589Z",
        "content-type": b"application/json",
    }
    headers.update(override)
    return [(k, v) for k, v in headers.items() if v is not None]


def _structured(payload: Contract, **attrs: Any) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    body = {
        "specversion": "1.0",
        "id": "evt-77",
        "type": payload.CE_TYPE,
        "source": "urn:billing-service",
        "time": "2026-03-14T09:26:53.589Z",
        "datacontenttype": "application/json",
        "data": payload.model_dump(mode="json"),
        **attrs,
    }
    return orjson.dumps(body), [("content-type", b"application/cloudevents+json; charset=utf-8")]


# --- generated artefacts -------------------------------------------------------------------


def test_every_contract_has_an_example() -> None:
    assert set(EXAMPLES) == set(ALL_CONTRACTS)
    assert all(type(v) is k for k, v in EXAMPLES.items())


def test_schemas_on_disk_match_the_models() -> None:
    rendered = schemas.render_all()
    on_disk = {p.name: p.read_bytes() for p in schemas.SCHEMA_DIR.glob("*.json")}
    missing = sorted(rendered.keys() - on_disk.keys())
    extra = sorted(on_disk.keys() - rendered.keys())
    changed = sorted(n for n in rendered.keys() & on_disk.keys() if rendered[n] != on_disk[n])
    assert not (missing or extra or changed), (
        f"JSON Schemas out of date (missing {missing}, no longer a contract {extra}, "
        f"changed {changed}); {REGENERATE}"
    )


def test_asyncapi_on_disk_matches_the_code() -> None:
    path = asyncapi.ASYNCAPI_PATH
    assert path.exists(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == asyncapi.render(), (
        f"{path} is out of date; {REGENERATE}"
    )


def test_check_mode_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--check"]) == 0, capsys.readouterr().err


def test_asyncapi_references_resolve() -> None:
    doc = yaml.safe_load(asyncapi.ASYNCAPI_PATH.read_text(encoding="utf-8"))
    assert doc == asyncapi.render_document()
    assert doc["asyncapi"] == "3.0.0"
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs
    for ref in refs:
        if ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                assert part in target, f"dangling {ref}"
                target = target[part]
        else:
            file = (asyncapi.ASYNCAPI_PATH.parent / ref).resolve()
            assert file.is_file(), f"{ref} does not exist"
            assert orjson.loads(file.read_bytes())["x-ce-type"] == file.stem


def test_every_contract_has_a_message_in_the_asyncapi_document() -> None:
    messages = asyncapi.render_document()["components"]["messages"]
    for model in ALL_CONTRACTS:
        msg = messages[model.__name__]
        assert msg["name"] == model.CE_TYPE
        assert msg["payload"] == {"$ref": f"./src/podium_contracts/schemas/{model.CE_TYPE}.json"}
        assert msg["bindings"]["kafka"]["key"]["type"] == "string"
    headers = asyncapi.render_document()["components"]["schemas"]["CloudEventHeaders"]
    assert set(headers["properties"]) == {
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_time",
        "ce_specversion",
        "content-type",
        "traceparent",
    }
    # What encode() writes is what the document promises.
    _, written = encode(EXAMPLES[TaskSubmitted], source="t", traceparent=TRACEPARENT)
    assert {k for k, _ in written} == set(headers["properties"])


# --- the topic table agrees with podium_shared ---------------------------------------------


def _expanded(pools: tuple[str, ...]) -> set[tuple[str, str]]:
    out = set()
    for ch in asyncapi.CHANNELS:
        names = (
            [ch.address.replace("{pool}", p) for p in pools]
            if "{pool}" in ch.address
            else [ch.address]
        )
        for name in names:
            out.add((name, ch.key))
            if ch.dlq:
                out.add((name + asyncapi.DLQ_SUFFIX, ch.key))
    return out


@pytest.mark.parametrize("pools", [("default", "memory"), ("default", "memory", "gpu")])
def test_channel_table_agrees_with_topics(pools: tuple[str, ...]) -> None:
    declared = {(t.name, t.key) for t in Topics().declarations(pools)}
    assert _expanded(pools) == declared


def test_channel_table_uses_the_default_prefix_and_the_steps_template() -> None:
    topics = Topics()
    assert topics.prefix == asyncapi.TOPIC_PREFIX
    steps = next(ch for ch in asyncapi.CHANNELS if "{pool}" in ch.address)
    assert steps.address.replace("{pool}", "x-1") == topics.steps("x-1")
    assert Topics.dlq("") == asyncapi.DLQ_SUFFIX


def test_channel_table_names_every_contract_once() -> None:
    carried = [t for ch in asyncapi.CHANNELS for t in ch.ce_types]
    assert sorted(carried) == sorted(REGISTRY)


def test_dlq_reasons_and_headers_agree_with_podium_shared() -> None:
    assert set(asyncapi.DLQ_REASONS) == set(DlqReason)
    record = dead_letter(
        topic="podium.steps.default.v1",
        partition=3,
        offset=42,
        key=b"k",
        value=b"v",
        headers=[("ce_id", b"x")],
        reason=DlqReason.STEP_ABANDONED,
        error_type="timeout",
        error_message="took too long",
        service="recovery",
        attempts=5,
        extra={DlqHeader.ERROR_CLASS: "retryable", DlqHeader.TASK_ID: "t", DlqHeader.STEP_ID: "s"},
    )
    written = set(dlq_headers(record.headers))
    assert written == set(asyncapi.DLQ_HEADERS)
    assert set(asyncapi.DLQ_REQUIRED_HEADERS) <= written


def test_contract_error_reasons_are_dlq_reasons() -> None:
    for exc in (UndecodableMessage, UnknownContract, InvalidMessage):
        assert DlqReason(exc.reason)


# --- compatibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_CONTRACTS, ids=_ids)
def test_checked_in_schema_is_compatible_with_the_model(model: type[Contract]) -> None:
    path = schemas.SCHEMA_DIR / f"{model.CE_TYPE}.json"
    assert path.exists(), f"{model.CE_TYPE} has no checked-in schema: run `make schemas`"
    old = orjson.loads(path.read_bytes())
    problems = breaking_changes(old, schemas.render_schema(model))
    assert not problems, (
        f"{model.CE_TYPE} changed incompatibly: {problems}. Keep v1 as it is and add a new "
        "version (a new model with a new ce_type and an upcaster)."
    )


def test_no_checked_in_schema_is_orphaned() -> None:
    assert schemas.incompatibilities() == {}


class _Inner(BaseModel):
    limit: int | None = None


class _V1(BaseModel):
    task_id: str
    workflow: str
    priority: int = 0
    when: datetime | None = None
    inner: _Inner = Field(default_factory=_Inner)
    kind: Literal["a", "b"] = "a"
    tags: list[_Inner] = Field(default_factory=list)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="validation")


def test_identical_schemas_are_compatible() -> None:
    assert breaking_changes(_schema(_V1), _schema(_V1)) == []


def test_a_new_optional_field_is_compatible() -> None:
    class V2(_V1):
        note: str | None = None
        labels: dict[str, str] = Field(default_factory=dict)

    assert breaking_changes(_schema(_V1), _schema(V2)) == []


def test_a_required_field_becoming_optional_is_compatible() -> None:
    class V2(_V1):
        workflow: str = "default"

    assert breaking_changes(_schema(_V1), _schema(V2)) == []


def test_a_removed_field_is_breaking() -> None:
    class V2(BaseModel):
        task_id: str
        priority: int = 0
        when: datetime | None = None
        inner: _Inner = Field(default_factory=_Inner)
        kind: Literal["a", "b"] = "a"
        tags: list[_Inner] = Field(default_factory=list)

    assert breaking_changes(_schema(_V1), _schema(V2)) == ["workflow: required field removed"]


def test_a_removed_optional_field_is_breaking() -> None:
    class V2(BaseModel):
        task_id: str
        workflow: str
        when: datetime | None = None
        inner: _Inner = Field(default_factory=_Inner)
        kind: Literal["a", "b"] = "a"
        tags: list[_Inner] = Field(default_factory=list)

    assert breaking_changes(_schema(_V1), _schema(V2)) == ["priority: field removed"]


def test_a_new_required_field_is_breaking() -> None:
    class V2(_V1):
        tenant: str

    assert breaking_changes(_schema(_V1), _schema(V2)) == [
        "tenant: new required field (give it a default)"
    ]


def test_an_optional_field_becoming_required_is_breaking() -> None:
    class V2(_V1):
        priority: int

    assert breaking_changes(_schema(_V1), _schema(V2)) == [
        "priority: optional field became required"
    ]


@pytest.mark.parametrize(
    ("field", "annotation", "expected"),
    [
        ("priority", str, "priority: type changed from integer to string"),
        ("priority", float, "priority: type changed from integer to number"),
        ("priority", int | None, "priority: type changed from integer to integer|null"),
        ("when", str | None, "when: type changed from null|string(date-time) to null|string"),
    ],
)
def test_a_changed_type_is_breaking(field: str, annotation: Any, expected: str) -> None:
    old = _schema(_V1)
    new = _schema(_V1)
    new["properties"][field] = _field_schema(annotation)
    assert breaking_changes(old, new) == [expected]


def _field_schema(annotation: Any) -> dict[str, Any]:
    class Probe(BaseModel):
        x: annotation

    return dict(_schema(Probe)["properties"]["x"])


def test_a_changed_type_inside_a_nested_model_is_breaking() -> None:
    class Inner2(BaseModel):
        limit: str | None = None

    class V2(_V1):
        inner: Inner2 = Field(default_factory=Inner2)  # type: ignore[assignment]

    assert breaking_changes(_schema(_V1), _schema(V2)) == [
        "inner.limit: type changed from integer|null to null|string"
    ]


def test_a_removed_field_inside_list_items_is_breaking() -> None:
    class Inner2(BaseModel):
        other: int = 0

    class V2(_V1):
        tags: list[Inner2] = Field(default_factory=list)  # type: ignore[assignment]

    assert breaking_changes(_schema(_V1), _schema(V2)) == ["tags[].limit: field removed"]


def test_changed_enum_values_are_breaking() -> None:
    class V2(_V1):
        kind: Literal["a", "c"] = "a"  # type: ignore[assignment]

    assert breaking_changes(_schema(_V1), _schema(V2)) == [
        "kind: allowed values changed: removed [\"'b'\"], added [\"'c'\"]"
    ]


def test_forbidding_unknown_fields_is_breaking() -> None:
    class V2(_V1):
        model_config = ConfigDict(extra="forbid")

    assert breaking_changes(_schema(_V1), _schema(V2)) == [
        "<root>: now forbids unknown fields (additionalProperties: false)"
    ]


def test_a_changed_ce_type_is_breaking() -> None:
    old = schemas.render_schema(TaskSubmitted)
    new = {**old, "x-ce-type": "podium.task.submitted.v2"}
    assert breaking_changes(old, new) == [
        "x-ce-type changed from 'podium.task.submitted.v1' to 'podium.task.submitted.v2'"
    ]


def test_the_generator_refuses_a_breaking_change(tmp_path: Path) -> None:
    schemas.write_all(tmp_path)
    path = tmp_path / f"{TaskSubmitted.CE_TYPE}.json"
    old = orjson.loads(path.read_bytes())
    old["properties"]["legacy"] = {"type": "string"}  # a field the model no longer has
    path.write_bytes(schemas.dumps(old))
    with pytest.raises(ValueError, match="legacy: field removed"):
        schemas.write_all(tmp_path)
    assert schemas.write_all(tmp_path, allow_breaking=True) == [path]
    assert path.read_bytes() == schemas.render_all()[path.name]


# --- the codec -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_CONTRACTS, ids=_ids)
def test_binary_round_trip(model: type[Contract]) -> None:
    payload = EXAMPLES[model]
    value, headers = encode(payload, source="router", id="id-1", time=T0, traceparent=TRACEPARENT)
    h = dict(headers)
    assert h["ce_type"] == model.CE_TYPE.encode()
    assert h["ce_specversion"] == b"1.0"
    assert h["content-type"] == b"application/json"
    assert orjson.loads(value) == payload.model_dump(mode="json")

    event = decode(value, headers)
    assert event.payload == payload
    assert type(event.payload) is model
    assert event.envelope.id == "id-1"
    assert event.envelope.type == model.CE_TYPE
    assert event.envelope.source == "router"
    assert event.envelope.time == T0
    assert event.envelope.traceparent == TRACEPARENT


@pytest.mark.parametrize("model", ALL_CONTRACTS, ids=_ids)
def test_structured_mode_decodes(model: type[Contract]) -> None:
    payload = EXAMPLES[model]
    value, headers = _structured(payload, traceparent=TRACEPARENT)
    event = decode(value, headers)
    assert event.payload == payload
    assert event.envelope.id == "evt-77"
    assert event.envelope.type == model.CE_TYPE
    assert event.envelope.source == "urn:billing-service"
    assert event.envelope.time == datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
    assert event.envelope.traceparent == TRACEPARENT


def test_structured_mode_takes_traceparent_from_the_kafka_header_too() -> None:
    value, headers = _structured(EXAMPLES[TaskSubmitted])
    headers.append(("traceparent", TRACEPARENT.encode()))
    assert decode(value, headers).envelope.traceparent == TRACEPARENT


def test_binary_mode_without_traceparent() -> None:
    value, headers = encode(EXAMPLES[TaskSubmitted], source="cli")
    assert "traceparent" not in dict(headers)
    assert decode(value, headers).envelope.traceparent is None


TRACESTATE = "vendor1=opaque1,vendor2=opaque2"


def test_tracestate_round_trips_beside_the_traceparent() -> None:
    value, headers = encode(
        EXAMPLES[TaskSubmitted], source="cli", traceparent=TRACEPARENT, tracestate=TRACESTATE
    )
    assert dict(headers)["tracestate"] == TRACESTATE.encode()
    envelope = decode(value, headers).envelope
    assert (envelope.traceparent, envelope.tracestate) == (TRACEPARENT, TRACESTATE)


def test_tracestate_without_a_traceparent_is_neither_written_nor_read() -> None:
    value, headers = encode(EXAMPLES[TaskSubmitted], source="cli", tracestate=TRACESTATE)
    assert "tracestate" not in dict(headers)
    headers.append(("tracestate", TRACESTATE.encode()))
    assert decode(value, headers).envelope.tracestate is None


def test_structured_mode_reads_tracestate() -> None:
    value, headers = _structured(
        EXAMPLES[TaskSubmitted], traceparent=TRACEPARENT, tracestate=TRACESTATE
    )
    assert decode(value, headers).envelope.tracestate == TRACESTATE


def test_header_names_are_case_insensitive() -> None:
    value, headers = _structured(EXAMPLES[TaskSubmitted])
    headers = [("Content-Type", v) for _, v in headers]
    assert decode(value, headers).payload == EXAMPLES[TaskSubmitted]


def test_a_minimal_task_from_another_language_decodes() -> None:
    value = b'{"task_id": "t-1", "workflow": "echo", "input": {"text": "hi"}}'
    event = decode(value, _binary_headers())
    assert event.payload == TaskSubmitted(task_id="t-1", workflow="echo", input={"text": "hi"})
    assert event.envelope.time == datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def test_unknown_payload_fields_are_ignored() -> None:
    value = b'{"task_id": "t-1", "workflow": "echo", "added_in_a_later_minor": 1}'
    assert decode(value, _binary_headers()).payload == TaskSubmitted(task_id="t-1", workflow="echo")


@pytest.mark.parametrize(
    ("value", "headers", "error", "reason", "words"),
    [
        (b"not json{", _binary_headers(), UndecodableMessage, "undecodable", "not JSON"),
        (b"", _binary_headers(), UndecodableMessage, "undecodable", "not JSON"),
        (None, _binary_headers(), UndecodableMessage, "undecodable", "tombstone"),
        (
            b'{"task_id": "t", "workflow": "w"}',
            [("content-type", b"application/json")],
            UndecodableMessage,
            "undecodable",
            "missing id, type, source, specversion",
        ),
        (
            b'{"task_id": "t", "workflow": "w"}',
            _binary_headers(ce_source=None),
            UndecodableMessage,
            "undecodable",
            "missing source",
        ),
        (
            b'{"task_id": "t", "workflow": "w"}',
            _binary_headers(ce_specversion=b"0.3"),
            UndecodableMessage,
            "undecodable",
            "specversion",
        ),
        (
            b'{"task_id": "t", "workflow": "w"}',
            _binary_headers(ce_id=b"\xff\xfe"),
            UndecodableMessage,
            "undecodable",
            "UTF-8",
        ),
        (
            b'{"task_id": "t", "workflow": "w"}',
            _binary_headers(ce_time=b"yesterday"),
            UndecodableMessage,
            "undecodable",
            "RFC 3339",
        ),
        (
            b"[1, 2]",
            [("content-type", b"application/cloudevents+json")],
            UndecodableMessage,
            "undecodable",
            "JSON object",
        ),
        (
            b'{"task_id": "t", "workflow": "w"}',
            _binary_headers("podium.task.submitted.v9"),
            UnknownContract,
            "unknown_type",
            "podium.task.submitted.v9",
        ),
        (b'{"workflow": "w"}', _binary_headers(), InvalidMessage, "invalid", "task_id"),
        (
            b'{"task_id": "", "workflow": "w"}',
            _binary_headers(),
            InvalidMessage,
            "invalid",
            "task_id",
        ),
        (
            b'{"task_id": "t", "workflow": "w", "budget": {"max_tokens": -1}}',
            _binary_headers(),
            InvalidMessage,
            "invalid",
            "budget.max_tokens",
        ),
        (b'["t", "w"]', _binary_headers(), InvalidMessage, "invalid", "JSON object"),
    ],
    ids=[
        "not-json",
        "empty",
        "tombstone",
        "no-ce-headers",
        "no-source",
        "old-specversion",
        "non-utf8-header",
        "bad-time",
        "structured-not-object",
        "unknown-version",
        "missing-task-id",
        "empty-task-id",
        "nested-constraint",
        "payload-not-object",
    ],
)
def test_decode_errors(
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    error: type[ContractError],
    reason: str,
    words: str,
) -> None:
    with pytest.raises(error) as info:
        decode(value, headers)
    assert isinstance(info.value, ContractError)
    assert info.value.reason == reason
    assert words in str(info.value)


def test_structured_mode_errors() -> None:
    value, headers = _structured(EXAMPLES[TaskSubmitted], type="podium.task.submitted.v9")
    with pytest.raises(UnknownContract):
        decode(value, headers)
    value, headers = _structured(EXAMPLES[TaskSubmitted], data={"workflow": "w"})
    with pytest.raises(InvalidMessage, match="task_id"):
        decode(value, headers)
    body = orjson.loads(_structured(EXAMPLES[TaskSubmitted])[0])
    del body["id"]
    with pytest.raises(UndecodableMessage, match="missing id"):
        decode(orjson.dumps(body), headers)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("id", {"a": [1]}), ("id", 1), ("id", 1.0), ("id", True), ("source", 7), ("type", ["x"])],
)
def test_structured_mode_refuses_attributes_that_are_not_strings(
    attribute: str, value: object
) -> None:
    # str() used to turn 1 into "1" and {"a": [1]} into "{'a': [1]}": ids that collide
    # with a string id, so the inbox took two distinct events for one.
    encoded, headers = _structured(EXAMPLES[TaskSubmitted], **{attribute: value})
    with pytest.raises(UndecodableMessage, match=f"{attribute} must be JSON strings"):
        decode(encoded, headers)


def test_structured_mode_keeps_extension_attributes_of_other_types() -> None:
    encoded, headers = _structured(EXAMPLES[TaskSubmitted], priorityext=3, flagext=True)
    assert decode(encoded, headers).envelope.id == "evt-77"


def test_a_consumed_record_without_a_key_is_invalid() -> None:
    value, headers = encode(EXAMPLES[TaskSubmitted], source="upstream")
    for key in (None, b""):
        with pytest.raises(InvalidMessage, match="no Kafka key"):
            decode_record(value, headers, key)
    assert decode_record(value, headers, b"any-key").payload == EXAMPLES[TaskSubmitted]
    # What cannot be decoded keeps its own reason, key or not.
    with pytest.raises(UndecodableMessage):
        decode_record(b"{not json", headers, None)


def test_a_registry_can_narrow_what_a_consumer_reads() -> None:
    value, headers = encode(EXAMPLES[StepCompleted], source="executor")
    with pytest.raises(UnknownContract):
        decode(value, headers, registry={TaskSubmitted.CE_TYPE: TaskSubmitted})


# --- the models ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_CONTRACTS, ids=_ids)
def test_contracts_are_frozen(model: type[Contract]) -> None:
    payload = EXAMPLES[model]
    with pytest.raises(ValidationError, match="frozen"):
        setattr(payload, "task_id", "other")  # noqa: B010 (mypy cannot see task_id on Contract)


@pytest.mark.parametrize(
    "part",
    [
        Budget(),
        Usage(),
        _ERROR,
        TaskError(type="t", message="m"),
        DlqLocation(topic="t", record_id="r"),
        _SUMMARY,
    ],
    ids=lambda p: type(p).__name__,
)
def test_nested_models_are_frozen(part: BaseModel) -> None:
    name = next(iter(type(part).model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(part, name, None)


def test_task_submitted_defaults() -> None:
    task = TaskSubmitted(task_id="t-1", workflow="echo")
    assert task.tenant == "default"
    assert task.budget == Budget()
    assert task.budget.max_cost_usd is None
    assert task.budget.max_tokens is None
    assert task.input == {}
    assert task.metadata == {}
    assert task.priority == 0
    assert task.subject is None
    assert task.deadline is None


def test_every_contract_names_a_distinct_versioned_ce_type() -> None:
    types = [c.CE_TYPE for c in ALL_CONTRACTS]
    assert len(set(types)) == len(types)
    assert {c.CE_TYPE: c for c in ALL_CONTRACTS} == REGISTRY
    for t in types:
        domain, *_, version = t.split(".")
        assert domain == "podium"
        assert version == "v1"


def test_usage_adds_up() -> None:
    total = Usage(cost_usd=0.5, prompt_tokens=10, completion_tokens=2) + Usage(
        cost_usd=0.25, prompt_tokens=5, completion_tokens=1
    )
    assert total == Usage(cost_usd=0.75, prompt_tokens=15, completion_tokens=3)


def test_nested_models_ignore_unknown_fields_like_contracts_do() -> None:
    value = b'{"task_id": "t", "workflow": "w", "budget": {"max_tokens": 5, "max_steps": 3}}'
    task = decode(value, _binary_headers()).payload
    assert isinstance(task, TaskSubmitted)
    assert task.budget == Budget(max_tokens=5)


# --- public names ----------------------------------------------------------------------------


def test_public_names() -> None:
    assert podium_contracts.__all__ == [
        "ALL_CONTRACTS",
        "CONSUMER_GROUP",
        "DLQ_HEADER_PREFIX",
        "DLQ_SUFFIX",
        "MAX_JSON_DEPTH",
        "REGISTRY",
        "TOPIC_PREFIX",
        "TRACEPARENT",
        "TRACESTATE",
        "TRACE_HEADERS",
        "BreakerStatus",
        "Budget",
        "Contract",
        "ContractError",
        "DlqHeader",
        "DlqLocation",
        "DlqReason",
        "Envelope",
        "ErrorClass",
        "Event",
        "FallbackPolicy",
        "Headers",
        "HistoryKind",
        "InvalidMessage",
        "PlannedStep",
        "PoolStatusReported",
        "RateLimitStatus",
        "RetryPolicy",
        "StepAbandoned",
        "StepCompleted",
        "StepError",
        "StepErrorType",
        "StepFailed",
        "StepRequested",
        "StepRetryScheduled",
        "StepSummary",
        "TaskAccepted",
        "TaskCancelRequested",
        "TaskCancelled",
        "TaskCompleted",
        "TaskError",
        "TaskErrorType",
        "TaskFailed",
        "TaskHistoryRecorded",
        "TaskRejected",
        "TaskSubmitted",
        "TenantMismatch",
        "TopicPattern",
        "UndecodableMessage",
        "UnexpectedContract",
        "UnknownContract",
        "UnknownTask",
        "Usage",
        "consumer_group",
        "decode",
        "decode_record",
        "dlq_topic",
        "encode",
        "json_depth",
        "new_id",
    ]
    for name in podium_contracts.__all__:
        assert hasattr(podium_contracts, name), name


# --- bounds: what every store and the codec can hold ---------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("priority", 2**63, "priority: Input should be less than or equal to 2147483647"),
        ("priority", -(2**31) - 1, "priority: Input should be greater than or equal to"),
        ("budget", {"max_tokens": 2**63}, "budget.max_tokens: Input should be less than"),
        ("budget", {"max_cost_usd": "inf"}, "budget.max_cost_usd: Input should be a finite"),
        ("workflow_version", 2**31, "workflow_version: Input should be less than"),
        ("subject", "s" * 201, "subject: String should have at most 200 characters"),
    ],
)
def test_out_of_bounds_submissions_are_invalid_messages(
    field: str, value: Any, message: str
) -> None:
    # the standard library writes what orjson (254 levels) cannot, as other clients do
    body = json.dumps({"task_id": "t", "workflow": "w", field: value}).encode()
    with pytest.raises(InvalidMessage) as err:
        decode(body, _binary_headers())
    assert message in str(err.value)


def test_the_bounds_themselves_are_accepted() -> None:
    body = {
        "task_id": "t",
        "workflow": "w",
        "priority": -(2**31),
        "budget": {"max_tokens": 2**31 - 1, "max_cost_usd": 1e9},
        "input": _nested(60),
        "subject": "s" * 200,
    }
    task = decode(orjson.dumps(body), _binary_headers()).payload
    assert isinstance(task, TaskSubmitted) and json_depth(task.input) == 60


def test_json_depth_counts_containers_and_needs_no_recursion() -> None:
    assert [json_depth(v) for v in (1, "x", {}, [], {"a": [1]}, [[[]]])] == [0, 0, 1, 1, 2, 3]
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep) == 100_001

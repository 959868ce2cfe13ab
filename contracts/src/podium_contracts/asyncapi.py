"""The AsyncAPI 3.0 document of podium's topics, generated into ``contracts/asyncapi.yaml``.

Topic names, DLQ reasons and ``podium-dlq-*`` header names come from
:mod:`podium_contracts.vocabulary`; :data:`CHANNELS` adds what the document says of
each topic — key, the contracts it carries, who writes and reads it — and a unit
test keeps it in step with ``podium_shared.topics``. :data:`DLQ_REASONS` and
:data:`DLQ_HEADERS` describe each reason and header.

Payloads refer to the checked-in JSON Schemas (``podium_contracts/schemas``);
headers are the CloudEvents 1.0 Kafka binding in binary mode plus W3C
``traceparent``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from podium_contracts.envelope import JSON, SPEC_VERSION, STRUCTURED
from podium_contracts.models import ALL_CONTRACTS, Contract
from podium_contracts.vocabulary import (
    DLQ_HEADER_PREFIX,
    DLQ_SUFFIX,
    TOPIC_PREFIX,
    TRACEPARENT,
    DlqHeader,
    DlqReason,
    TopicPattern,
)

ASYNCAPI_PATH = Path(__file__).resolve().parents[2] / "asyncapi.yaml"
# Where the JSON Schemas are, relative to ASYNCAPI_PATH (a test checks it).
SCHEMA_REF_DIR = "./src/podium_contracts/schemas"

PODIUM = "podium"  # the application this document describes
UPSTREAM = "upstream"  # systems outside podium that submit tasks and read outcomes


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One topic: its address (``{pool}`` is a parameter), key, contracts, writers and readers."""

    id: str
    address: str
    key: str
    ce_types: tuple[str, ...]
    description: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    dlq: bool = True


CHANNELS: tuple[ChannelSpec, ...] = (
    ChannelSpec(
        id="tasks",
        address=TopicPattern.TASKS.under(),
        key="task_id",
        ce_types=("podium.task.submitted.v1", "podium.task.cancel-requested.v1"),
        description="Tasks submitted (or cancelled) by upstream systems. "
        "Binary or structured CloudEvents.",
        producers=(UPSTREAM, "api"),
        consumers=("router", "api"),
    ),
    ChannelSpec(
        id="taskEvents",
        address=TopicPattern.TASK_EVENTS.under(),
        key="task_id",
        ce_types=(
            "podium.task.accepted.v1",
            "podium.task.completed.v1",
            "podium.task.failed.v1",
            "podium.task.cancelled.v1",
            "podium.task.rejected.v1",
            "podium.task.history-recorded.v1",
        ),
        description="What happened to each task, for upstream systems (and memory, which "
        "remembers finished tasks as episodes); a submission the router refused is "
        "answered with TaskRejected. Each entry of a task's history (cause and next "
        "action) is a TaskHistoryRecorded, which the api shows and others may ignore.",
        producers=("router",),
        consumers=(UPSTREAM, "memory", "api"),
    ),
    ChannelSpec(
        id="stepResults",
        address=TopicPattern.STEP_RESULTS.under(),
        key="task_id",
        ce_types=(
            "podium.step.completed.v1",
            "podium.step.abandoned.v1",
            "podium.step.retry-scheduled.v1",
        ),
        description="Steps that finished, were scheduled for retry, or that recovery gave up "
        "on, back to the router.",
        producers=("executor", "memory", "recovery"),
        consumers=("router", "api"),
    ),
    ChannelSpec(
        id="stepFailures",
        address=TopicPattern.STEP_FAILURES.under(),
        key="task_id",
        ce_types=("podium.step.failed.v1",),
        description="Steps that failed, to recovery, which retries or abandons them.",
        producers=("executor", "memory"),
        consumers=("recovery", "api"),
    ),
    ChannelSpec(
        id="steps",
        address=TopicPattern.STEPS.under(),
        key="step_id",
        ce_types=("podium.step.requested.v1",),
        description="Steps for one executor pool to run; one topic per pool.",
        producers=("router", "recovery"),
        consumers=("executor", "memory"),
    ),
    # Breaker states and rate limits live in each executor replica's memory, and the
    # api may not read another service's database: replicas publish them here.
    ChannelSpec(
        id="poolStatus",
        address=TopicPattern.POOL_STATUS.under(),
        key="replica",
        ce_types=("podium.pool.status-reported.v1",),
        description="Each executor replica's breakers and rate limit, every few seconds "
        "(short retention: only the latest report of a live replica matters).",
        producers=("executor",),
        consumers=("api",),
        dlq=False,
    ),
)

POOL_EXAMPLES = ("default", "memory")


def carried_by(topic: str, prefix: str = TOPIC_PREFIX) -> frozenset[str]:
    """The ce_types a topic under ``prefix`` carries, from :data:`CHANNELS`: what a
    consumer of that topic accepts (empty for a topic no channel declares)."""
    for ch in CHANNELS:
        address = re.escape(prefix + ch.address.removeprefix(TOPIC_PREFIX))
        if re.fullmatch(address.replace(re.escape("{pool}"), r"[^.]+"), topic):
            return frozenset(ch.ce_types)
    return frozenset()


KEY_DESCRIPTIONS = {
    "task_id": "The task's task_id (UTF-8): every message of one task stays in order "
    "on one partition.",
    "step_id": "`{task_id}/{step_id}` (UTF-8): one task's steps spread over the pool's "
    "partitions and so over its replicas.",
    "replica": "The reporting replica (UTF-8, host and instance).",
}

# podium_shared.topics.DLQ_RETENTION_MS, restated (contracts import nothing of the
# runtime); a test keeps the two equal.
DLQ_RETENTION_MS = 90 * 24 * 3600 * 1000
DLQ_REASONS: dict[DlqReason, str] = {
    DlqReason.UNDECODABLE: "not a CloudEvent with a JSON payload",
    DlqReason.UNKNOWN_TYPE: "a ce_type or version this consumer does not read",
    DlqReason.UNEXPECTED_TYPE: "a known ce_type on a topic that does not carry it",
    DlqReason.INVALID: "a known type whose payload fails validation",
    DlqReason.UNKNOWN_TASK: "a well-formed message about a task its reader has no record of",
    DlqReason.PROCESSING_ERROR: "the handler raised on this message",
    DlqReason.STEP_ABANDONED: "recovery gave up on a step (the value is its StepRequested)",
    DlqReason.TENANT_MISMATCH: "a message on a tenant's own topic claiming another tenant",
}
DLQ_HEADERS: dict[DlqHeader, str] = {
    DlqHeader.REASON: "why the record is here: " + ", ".join(DLQ_REASONS),
    DlqHeader.ERROR_TYPE: "the error's class or type (e.g. InvalidMessage, timeout)",
    DlqHeader.ERROR_MESSAGE: "the error's message, at most 2000 characters",
    DlqHeader.ORIGINAL_TOPIC: "the topic the record was consumed from",
    DlqHeader.ORIGINAL_PARTITION: "its partition (-1 when dead-lettered without being consumed)",
    DlqHeader.ORIGINAL_OFFSET: "its offset (-1 when dead-lettered without being consumed)",
    DlqHeader.SERVICE: "the service that dead-lettered it",
    DlqHeader.ATTEMPTS: "how many times it was tried",
    DlqHeader.TIME: "when it was dead-lettered (RFC 3339)",
    DlqHeader.ERROR_CLASS: "step_abandoned only: retryable or fatal",
    DlqHeader.TASK_ID: "step_abandoned only: the step's task",
    DlqHeader.STEP_ID: "step_abandoned only: the step",
}
# Written on every dead letter; the others only for some reasons.
DLQ_REQUIRED_HEADERS = (
    DlqHeader.REASON,
    DlqHeader.ERROR_TYPE,
    DlqHeader.ERROR_MESSAGE,
    DlqHeader.ORIGINAL_TOPIC,
    DlqHeader.ORIGINAL_PARTITION,
    DlqHeader.ORIGINAL_OFFSET,
    DlqHeader.SERVICE,
    DlqHeader.ATTEMPTS,
    DlqHeader.TIME,
)

_TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def _contracts() -> dict[str, type[Contract]]:
    return {c.CE_TYPE: c for c in ALL_CONTRACTS}


def _summary(model: type[Contract]) -> str:
    doc = (model.__doc__ or "").strip()
    if not doc or doc == Contract.__doc__:
        return f"{model.__name__} ({model.CE_TYPE})."
    return doc.splitlines()[0]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _schema_ref(ce_type: str) -> dict[str, str]:
    return {"$ref": f"{SCHEMA_REF_DIR}/{ce_type}.json"}


def _channel_keys() -> dict[str, str]:
    """ce_type → key name; a contract carried on two channels must keep one key."""
    keys: dict[str, str] = {}
    for ch in CHANNELS:
        for t in ch.ce_types:
            if keys.setdefault(t, ch.key) != ch.key:
                raise ValueError(f"{t} is keyed by both {keys[t]} and {ch.key}")
    return keys


def _cloudevent_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0, Kafka protocol binding, binary content mode: the attributes are "
            "ce_* headers (UTF-8) and the value is the JSON payload. podium writes every "
            "header below except traceparent when there is no trace; readers require "
            "ce_specversion, ce_id, ce_type and ce_source. Unknown headers are ignored."
        ),
        "required": ["ce_specversion", "ce_id", "ce_type", "ce_source"],
        "properties": {
            "ce_specversion": {"type": "string", "const": SPEC_VERSION},
            "ce_id": {
                "type": "string",
                "description": "Unique per message; consumers deduplicate on it, so a "
                "resend of the same message must keep its id.",
                "examples": ["3f1c6d0a9b2e4f7c8d5a1b0e9f8c7d6e"],
            },
            "ce_type": {
                "type": "string",
                "description": "The contract and its major version.",
                "pattern": r"^podium\.[a-z-]+\.[a-z-]+\.v[0-9]+$",
            },
            "ce_source": {
                "type": "string",
                "description": "Who wrote the message: a podium service or the upstream system.",
                "examples": ["router", "billing-service"],
            },
            "ce_time": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339; when absent, readers use the time they read it.",
            },
            "content-type": {"type": "string", "const": JSON},
            TRACEPARENT: {
                "type": "string",
                "pattern": _TRACEPARENT_PATTERN,
                "description": "W3C Trace Context; the trace continues through every service.",
            },
        },
    }


def _message(model: type[Contract], key: str) -> dict[str, Any]:
    return {
        "name": model.CE_TYPE,
        "title": model.__name__,
        "summary": _summary(model),
        "contentType": JSON,
        "headers": {
            "allOf": [
                {"$ref": "#/components/schemas/CloudEventHeaders"},
                {"type": "object", "properties": {"ce_type": {"const": model.CE_TYPE}}},
            ]
        },
        "payload": _schema_ref(model.CE_TYPE),
        "correlationId": {"$ref": "#/components/correlationIds/taskId"},
        "bindings": {"kafka": _key_binding(key)},
    }


def _structured_message(model: type[Contract], key: str) -> dict[str, Any]:
    return {
        "name": f"{model.CE_TYPE} (structured)",
        "title": f"{model.__name__}, structured mode",
        "summary": f"{_summary(model)} As one JSON CloudEvent, for clients of any CloudEvents SDK.",
        "contentType": STRUCTURED,
        "headers": {
            "type": "object",
            "required": ["content-type"],
            "properties": {
                "content-type": {"type": "string", "const": STRUCTURED},
                TRACEPARENT: {"type": "string", "pattern": _TRACEPARENT_PATTERN},
            },
        },
        "payload": {
            "type": "object",
            "required": ["specversion", "id", "type", "source", "data"],
            "properties": {
                "specversion": {"type": "string", "const": SPEC_VERSION},
                "id": {"type": "string"},
                "type": {"type": "string", "const": model.CE_TYPE},
                "source": {"type": "string"},
                "time": {"type": "string", "format": "date-time"},
                "datacontenttype": {"type": "string", "const": JSON},
                TRACEPARENT: {"type": "string", "pattern": _TRACEPARENT_PATTERN},
                "data": _schema_ref(model.CE_TYPE),
            },
        },
        "correlationId": {"$ref": "#/components/correlationIds/structuredTaskId"},
        "bindings": {"kafka": _key_binding(key)},
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "dead-letter",
        "title": "Dead letter",
        "summary": "A record a consumer could not handle: its key, value and headers untouched, "
        f"plus {DLQ_HEADER_PREFIX}* headers saying why, from where and when.",
        "headers": {
            "type": "object",
            "required": [h.header for h in DLQ_REQUIRED_HEADERS],
            "properties": {
                h.header: (
                    {"type": "string", "enum": [r.value for r in DLQ_REASONS], "description": desc}
                    if h is DlqHeader.REASON
                    else {"type": "string", "description": desc}
                )
                for h, desc in DLQ_HEADERS.items()
            },
            "additionalProperties": {
                "type": "string",
                "description": "the original record's headers (ce_*, content-type, traceparent)",
            },
        },
        "payload": {
            "description": "The original value, byte for byte; it may not be JSON at all.",
        },
    }


def _key_binding(key: str) -> dict[str, Any]:
    return {
        "key": {"type": "string", "description": KEY_DESCRIPTIONS[key]},
        "bindingVersion": "0.5.0",
    }


def _parameters(address: str) -> dict[str, Any]:
    if "{pool}" not in address:
        return {}
    return {
        "parameters": {
            "pool": {
                "description": "The executor pool; every pool has its own topic. Pools are "
                "named by workflow steps and routing rules.",
                "examples": list(POOL_EXAMPLES),
            }
        }
    }


def render_document() -> dict[str, Any]:
    """The AsyncAPI document as plain data, deterministic."""
    contracts = _contracts()
    keys = _channel_keys()
    unknown = sorted({t for ch in CHANNELS for t in ch.ce_types} - contracts.keys())
    if unknown:
        raise ValueError(f"CHANNELS names ce_types that are not contracts: {unknown}")
    names = {t: c.__name__ for t, c in contracts.items()}

    messages: dict[str, Any] = {}
    for ce_type, model in contracts.items():
        if ce_type in keys:
            messages[model.__name__] = _message(model, keys[ce_type])
    for ch in CHANNELS:
        if UPSTREAM in ch.producers:
            for t in ch.ce_types:
                messages[f"{names[t]}Structured"] = _structured_message(contracts[t], ch.key)
    messages["DeadLetter"] = _dead_letter_message()

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for ch in CHANNELS:
        msg_names = [names[t] for t in ch.ce_types]
        if UPSTREAM in ch.producers:
            msg_names += [f"{names[t]}Structured" for t in ch.ce_types]
        channels[ch.id] = {
            "address": ch.address,
            "title": ch.address,
            "description": f"{ch.description} Key: {ch.key}. "
            f"Written by {', '.join(ch.producers)}; read by {', '.join(ch.consumers)}.",
            **_parameters(ch.address),
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in msg_names},
        }
        refs = [{"$ref": f"#/channels/{ch.id}/messages/{m}"} for m in msg_names]
        ours = [p for p in ch.consumers if p != UPSTREAM]
        if ours:
            operations[f"receive{_cap(ch.id)}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{ch.id}"},
                "summary": f"Read by {', '.join(ours)}.",
                "messages": refs,
            }
        ours = [p for p in ch.producers if p != UPSTREAM]
        if ours:
            operations[f"send{_cap(ch.id)}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{ch.id}"},
                "summary": f"Written by {', '.join(ours)}.",
                "messages": [dict(r) for r in refs if not r["$ref"].endswith("Structured")],
            }
        if ch.dlq:
            dlq_id = f"{ch.id}Dlq"
            channels[dlq_id] = {
                "address": ch.address + DLQ_SUFFIX,
                "title": ch.address + DLQ_SUFFIX,
                "description": f"Dead letters of {ch.address}, with their original key "
                f"({ch.key}). One partition; read by operators and replay tools. Kept "
                "90 days by default (PODIUM_DLQ_RETENTION_MS; -1 for ever); with a "
                "replication factor of 3 or more, min.insync.replicas is one less.",
                **_parameters(ch.address),
                "bindings": {
                    "kafka": {
                        "partitions": 1,
                        "topicConfiguration": {"retention.ms": DLQ_RETENTION_MS},
                        "bindingVersion": "0.5.0",
                    }
                },
                "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            }
            operations[f"send{_cap(dlq_id)}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{dlq_id}"},
                "summary": f"The readers of {ch.address} dead-letter what they cannot handle.",
                "messages": [{"$ref": f"#/channels/{dlq_id}/messages/DeadLetter"}],
            }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "podium",
            "version": "1.0.0",
            "description": (
                "Topics and messages of podium, an orchestration layer for AI work. "
                "Upstream systems write TaskSubmitted to the tasks channel and read "
                "TaskAccepted/TaskCompleted/TaskFailed (or TaskRejected) from taskEvents; "
                "the other channels "
                "are podium's own. Topic names start with PODIUM_TOPIC_PREFIX "
                f"(default `{TOPIC_PREFIX}`). Every message is a CloudEvent 1.0 in Kafka binary "
                "mode (ce_* headers, JSON value); readers also accept structured mode "
                f"(content-type {STRUCTURED}). Delivery is at-least-once: deduplicate on "
                "ce_id. Additive changes keep a contract's version; anything else is a new "
                "ce_type. See docs/contracts.md."
            ),
        },
        "defaultContentType": JSON,
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "Any Kafka-compatible cluster (PODIUM_KAFKA_BOOTSTRAP).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"CloudEventHeaders": _cloudevent_headers()},
            "messages": messages,
            "correlationIds": {
                "taskId": {
                    "description": "Every message belongs to one task.",
                    "location": "$message.payload#/task_id",
                },
                "structuredTaskId": {
                    "description": "Every message belongs to one task.",
                    "location": "$message.payload#/data/task_id",
                },
            },
        },
    }


HEADER = (
    "# Generated by `python -m podium_contracts.schemas` from podium_contracts; do not edit.\n"
    "# Topic names use the default prefix; PODIUM_TOPIC_PREFIX changes it.\n"
)


class _NoAliases(yaml.SafeDumper):
    """Write repeated objects in full: anchors and aliases confuse AsyncAPI tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    """The AsyncAPI document as YAML text, deterministic."""
    body = yaml.dump(
        render_document(),
        Dumper=_NoAliases,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return HEADER + body


def write(path: Path = ASYNCAPI_PATH) -> Path:
    path.write_text(render(), encoding="utf-8")
    return path

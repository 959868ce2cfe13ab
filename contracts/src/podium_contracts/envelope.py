"""The CloudEvents 1.0 envelope in Kafka binary mode, and the codec.

Outbound messages are always binary mode: attributes in ``ce_*`` headers,
the payload as JSON in the value. Inbound decoding also accepts structured
mode (``content-type: application/cloudevents+json``), so any Kafka client in
any language can publish with its usual CloudEvents SDK.

The decoding errors form a small tree so the consumer can name the DLQ reason::

    ContractError
    ├── UndecodableMessage   bytes that are not a CloudEvent with a JSON payload
    ├── UnknownContract      a ce_type (or version) this consumer does not read
    ├── UnexpectedContract   a known ce_type on a topic that does not carry it
    └── InvalidMessage       a known type whose payload fails validation

JSON nesting is bounded at the edge (:data:`MAX_JSON_DEPTH`): orjson reads 1,024
levels, but its encoder stops at 254 and the standard library's (SQLAlchemy's JSON
columns) at the interpreter's recursion limit, so a deeper payload that got in
would fail later, on the way out, where failing is far harder to contain.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from podium_contracts.models import ALL_CONTRACTS, Contract
from podium_contracts.vocabulary import TRACEPARENT, TRACESTATE, DlqReason

SPEC_VERSION = "1.0"
JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
# Deepest JSON nesting a payload may have: well below orjson's encoder limit (254
# levels), leaving room for the envelopes that wrap a payload on its way out (a
# task's input inside a step's, an output inside TaskCompleted's steps).
MAX_JSON_DEPTH = 64

Headers = list[tuple[str, bytes]]


class ContractError(Exception):
    """A message this consumer cannot turn into a contract model."""

    reason: DlqReason = DlqReason.INVALID


class UndecodableMessage(ContractError):
    reason = DlqReason.UNDECODABLE


class UnknownContract(ContractError):
    reason = DlqReason.UNKNOWN_TYPE


class UnexpectedContract(ContractError):
    reason = DlqReason.UNEXPECTED_TYPE


class InvalidMessage(ContractError):
    reason = DlqReason.INVALID


class TenantMismatch(ContractError):
    """A message on one tenant's own topic that claims to be another tenant's: where the
    tenant is bound to the writer's principal, the topic says whose it is, and a claim
    that disagrees is refused rather than believed or silently corrected."""

    reason = DlqReason.TENANT_MISMATCH


class UnknownTask(ContractError):
    """A well-formed message about a task its reader has no record of (a cancel, a
    step result or a retry for a task never submitted here): dead-lettered with this
    reason rather than dropped, so it is seen and can be replayed."""

    reason = DlqReason.UNKNOWN_TASK


@dataclass(frozen=True, slots=True)
class Envelope:
    """CloudEvents attributes of one message."""

    id: str
    type: str
    source: str
    time: datetime
    traceparent: str | None = None
    extra_headers: tuple[tuple[str, bytes], ...] = field(default=())
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded message: its envelope and its typed payload (and, consumed, its topic)."""

    envelope: Envelope
    payload: Contract
    topic: str | None = None


REGISTRY: dict[str, type[Contract]] = {c.CE_TYPE: c for c in ALL_CONTRACTS}


def new_id() -> str:
    return uuid.uuid4().hex


def encode(
    payload: Contract,
    *,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> tuple[bytes, Headers]:
    """Serialize a contract to a binary-mode CloudEvent: (value, headers)."""
    ce_time = time or datetime.now(UTC)
    headers: Headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", (id or new_id()).encode()),
        ("ce_type", payload.CE_TYPE.encode()),
        ("ce_source", source.encode()),
        ("ce_time", ce_time.isoformat().encode()),
        ("content-type", JSON.encode()),
    ]
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
        if tracestate:  # W3C: vendor state travels only beside a traceparent
            headers.append((TRACESTATE, tracestate.encode()))
    value = orjson.dumps(payload.model_dump(mode="json"))
    return value, headers


# Context attributes the CloudEvents JSON format types as strings (String, URI,
# URI-reference, Timestamp); extensions may be other JSON types and are kept as text.
_STRING_ATTRIBUTES = (
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
)


def _header_map(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        if not k.isascii() and not _is_utf8(k):
            raise UndecodableMessage(f"header key {_raw_key(k)!r} is not UTF-8")
        if v is None:
            continue
        try:
            out[k.lower()] = v.decode()
        except UnicodeDecodeError as exc:
            raise UndecodableMessage(f"header {k!r} is not UTF-8") from exc
    return out


def _is_utf8(key: str) -> bool:
    # A key that was not UTF-8 on the wire reaches us with its bytes as lone
    # surrogates (podium_shared's record reader decodes them with surrogateescape).
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def _raw_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def json_depth_exceeds(value: bytes, body: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON ``body`` (from ``value``) nests deeper than ``limit``.
    Iterative, so no payload can exhaust the stack while it is measured."""
    if value.count(b"[") + value.count(b"{") <= limit:
        return False  # fewer brackets than the limit: the common case, without a walk
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _parse_time(raw: str | None) -> datetime:
    if not raw:
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UndecodableMessage(f"ce_time {raw!r} is not an RFC 3339 timestamp") from exc


def decode(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    registry: Mapping[str, type[Contract]] = REGISTRY,
    *,
    accepts: Collection[str] | None = None,
) -> Event:
    """Turn a Kafka record into an Event, or raise a ContractError saying why not.

    ``accepts`` is the ce_types the record's topic carries (None: any known type)."""
    hmap = _header_map(headers)
    if value is None:
        raise UndecodableMessage("empty value (tombstone)")
    try:
        body: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise UndecodableMessage(f"value is not JSON: {exc}") from exc
    if json_depth_exceeds(value, body):
        raise UndecodableMessage(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")

    if hmap.get("content-type", "").lower().startswith(STRUCTURED):
        if not isinstance(body, dict):
            raise UndecodableMessage("structured CloudEvent must be a JSON object")
        attrs = {k: v for k, v in body.items() if k != "data"}
        data = body.get("data")
        # The CloudEvents JSON format makes these attributes strings; coercing another
        # JSON value with str() would make {"a": [1]} or 1 an id that collides with a
        # string one, so the inbox would take two events for one.
        wrong = sorted(
            k for k in _STRING_ATTRIBUTES if k in attrs and not isinstance(attrs[k], str | None)
        )
        if wrong:
            raise UndecodableMessage(
                f"structured CloudEvent attribute(s) {', '.join(wrong)} must be JSON strings"
            )
        ce = {k: str(v) for k, v in attrs.items() if v is not None}
        traceparent = ce.get(TRACEPARENT) or hmap.get(TRACEPARENT)
        tracestate = ce.get(TRACESTATE) or hmap.get(TRACESTATE)
    else:
        ce = {k[3:]: v for k, v in hmap.items() if k.startswith("ce_")}
        data = body
        traceparent = hmap.get(TRACEPARENT)
        tracestate = hmap.get(TRACESTATE)

    missing = [a for a in ("id", "type", "source", "specversion") if not ce.get(a)]
    if missing:
        raise UndecodableMessage(f"not a CloudEvent: missing {', '.join(missing)}")
    if ce["specversion"] != SPEC_VERSION:
        raise UndecodableMessage(f"unsupported CloudEvents specversion {ce['specversion']!r}")
    model = registry.get(ce["type"])
    if model is None:
        raise UnknownContract(f"unknown ce_type {ce['type']!r}")
    if accepts is not None and ce["type"] not in accepts:
        raise UnexpectedContract(f"{ce['type']} is not carried by this topic")
    if not isinstance(data, dict):
        raise InvalidMessage(f"{ce['type']} payload must be a JSON object")
    try:
        payload = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise InvalidMessage(
            f"{ce['type']}: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from exc
    envelope = Envelope(
        id=ce["id"],
        type=ce["type"],
        source=ce["source"],
        time=_parse_time(ce.get("time")),
        traceparent=traceparent,
        tracestate=tracestate if traceparent else None,
    )
    return Event(envelope=envelope, payload=payload)


def decode_record(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    key: bytes | None,
    registry: Mapping[str, type[Contract]] = REGISTRY,
    *,
    accepts: Collection[str] | None = None,
) -> Event:
    """``decode`` for a consumed Kafka record, which must also carry a key.

    Every podium topic is keyed (task_id on task and result topics, step_id on pool
    topics): the key is what keeps one task's messages in order on one partition. A
    record without one would land on any partition, so a task's cancel could overtake
    its submit; it is refused as invalid rather than handled out of order."""
    event = decode(value, headers, registry, accepts=accepts)
    if not key:
        raise InvalidMessage(
            f"{event.envelope.type} has no Kafka key: podium topics are keyed (task_id "
            "on podium.tasks.v1) so every message of one task stays in order on one partition"
        )
    return event

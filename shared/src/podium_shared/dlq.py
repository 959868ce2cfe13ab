"""Dead-letter records: the original bytes and headers, untouched, plus
``podium-dlq-*`` headers saying why, from where, and when.

The reason is part of the contract (``DlqReason``), not a free string, so
operators can filter on it and replay tools can reason about it.

A copy is always sendable. One that would pass ``MAX_RECORD_BYTES`` keeps its
body in the blob store and says where (``podium-dlq-value-ref``, its size and
SHA-256); if the original headers or the key are what is large, they go the
same way (``headers-ref``, ``key-ref``), largest first, until the copy fits.
A record with neither key nor value (a null-key tombstone, which the producer
refuses) gets an empty value and ``podium-dlq-value-null: true``. Replay puts
everything back as it was (``original_record``).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from enum import StrEnum

import orjson

from podium_contracts import Headers
from podium_shared import blobs
from podium_shared.limits import MAX_RECORD_BYTES, record_size
from podium_shared.outbox import OutgoingMessage
from podium_shared.topics import Topics

PREFIX = "podium-dlq-"


class DlqReason(StrEnum):
    UNDECODABLE = "undecodable"  # not a CloudEvent with a JSON payload
    UNKNOWN_TYPE = "unknown_type"  # a ce_type or version this consumer does not read
    UNEXPECTED_TYPE = "unexpected_type"  # a known ce_type on a topic that does not carry it
    INVALID = "invalid"  # a known type whose payload fails validation
    UNKNOWN_TASK = "unknown_task"  # well-formed, about a task this reader has no record of
    PROCESSING_ERROR = "processing_error"  # the handler raised on this message
    STEP_ABANDONED = "step_abandoned"  # recovery gave up on a step


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    reason: DlqReason,
    error_type: str,
    error_message: str,
    service: str,
    attempts: int = 1,
    extra: dict[str, str] | None = None,
) -> OutgoingMessage:
    """Build the DLQ record for a consumed message (sent through the outbox)."""
    own = [(k, v) for k, v in headers if not k.startswith(PREFIX)]
    meta = {
        "reason": reason.value,
        "error-type": error_type,
        "error-message": error_message[:2000],
        "original-topic": topic,
        "original-partition": str(partition),
        "original-offset": str(offset),
        "service": service,
        "attempts": str(attempts),
        "time": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    return fit(Topics.dlq(topic), key, value, own, meta)


def fit(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    own: Headers,
    meta: dict[str, str],
    *,
    limit: int = MAX_RECORD_BYTES,
    store: blobs.BlobStore | None = None,
) -> OutgoingMessage:
    """The DLQ record of (key, value, own headers) with ``meta``, made sendable:
    whatever does not fit under ``limit`` goes to the blob store, by reference."""
    meta = dict(meta)
    if key is None and value is None:
        meta["value-null"] = "true"
        value = b""

    def record() -> OutgoingMessage:
        headers = own + [(PREFIX + k, v.encode()) for k, v in meta.items()]
        return OutgoingMessage(topic, key, value, headers)

    # Whatever is largest goes aside first, until the copy fits: usually only the body.
    while record_size(key, value, record().headers) > limit:
        sizes = {
            "value": len(value or b""),
            "headers": sum(len(k) + len(v) for k, v in own),
            "key": len(key or b""),
        }
        part = max(sizes, key=lambda p: sizes[p])
        if part == "value" and value:
            meta |= _aside("value", value, store)
            value = b""
        elif part == "headers" and own:
            listed = [[k, base64.b64encode(v).decode()] for k, v in own]
            meta |= _aside("headers", orjson.dumps(listed), store)
            own = []
        elif part == "key" and key:
            meta |= _aside("key", key, store)
            key = None
        else:  # only our own headers are left, and they are bounded
            break
    return record()


def _aside(part: str, data: bytes, store: blobs.BlobStore | None) -> dict[str, str]:
    url = (store or blobs.current()).put(data)
    return {
        f"{part}-ref": url,
        f"{part}-bytes": str(len(data)),
        f"{part}-sha256": hashlib.sha256(data).hexdigest(),
    }


def original_record(
    key: bytes | None, value: bytes | None, headers: Headers
) -> tuple[bytes | None, bytes | None, Headers]:
    """A DLQ record's original key, value and headers, read back from the blob
    store where the copy kept them aside."""
    meta = dlq_headers(headers)
    own = [(k, v) for k, v in headers if not k.startswith(PREFIX)]
    if "key-ref" in meta:
        key = _fetch(meta, "key")
    if "value-ref" in meta:
        value = _fetch(meta, "value")
    elif meta.get("value-null") == "true":
        value = None
    if "headers-ref" in meta:
        own = [(k, base64.b64decode(v)) for k, v in orjson.loads(_fetch(meta, "headers"))]
    return key, value, own


def _fetch(meta: dict[str, str], part: str) -> bytes:
    data = blobs.read(meta[f"{part}-ref"])
    if hashlib.sha256(data).hexdigest() != meta.get(f"{part}-sha256"):
        raise blobs.BlobError(f"blob {meta[f'{part}-ref']} does not match its SHA-256")
    return data


def dlq_headers(headers: Headers) -> dict[str, str]:
    """The ``podium-dlq-*`` headers of a record, without the prefix."""
    return {k.removeprefix(PREFIX): v.decode() for k, v in headers if k.startswith(PREFIX)}

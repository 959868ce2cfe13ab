"""Dead-letter records: the original bytes and headers, untouched, plus
``podium-dlq-*`` headers saying why, from where, and when.

The reason is part of the contract (``podium_contracts.DlqReason``), not a free
string, so operators can filter on it and replay tools can reason about it; the
header names are ``podium_contracts.DlqHeader``.

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

import orjson

from podium_contracts import DLQ_HEADER_PREFIX, DlqHeader, DlqReason, Headers
from podium_shared import blobs
from podium_shared.limits import MAX_RECORD_BYTES, record_size
from podium_shared.outbox import OutgoingMessage
from podium_shared.secrets import redact
from podium_shared.topics import Topics

PREFIX = DLQ_HEADER_PREFIX

__all__ = ["PREFIX", "DlqHeader", "DlqReason", "dead_letter", "dlq_headers", "fit"]


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
        DlqHeader.REASON: reason.value,
        DlqHeader.ERROR_TYPE: error_type,
        # Masked before it is cut: a secret cut in half would no longer match.
        DlqHeader.ERROR_MESSAGE: redact(error_message)[:2000],
        DlqHeader.ORIGINAL_TOPIC: topic,
        DlqHeader.ORIGINAL_PARTITION: str(partition),
        DlqHeader.ORIGINAL_OFFSET: str(offset),
        DlqHeader.SERVICE: service,
        DlqHeader.ATTEMPTS: str(attempts),
        DlqHeader.TIME: datetime.now(UTC).isoformat(),
        **{k: redact(v) for k, v in (extra or {}).items()},
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
        meta[DlqHeader.VALUE_NULL] = "true"
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
        DlqHeader(f"{part}-ref"): url,
        DlqHeader(f"{part}-bytes"): str(len(data)),
        DlqHeader(f"{part}-sha256"): hashlib.sha256(data).hexdigest(),
    }


def original_record(
    key: bytes | None, value: bytes | None, headers: Headers
) -> tuple[bytes | None, bytes | None, Headers]:
    """A DLQ record's original key, value and headers, read back from the blob
    store where the copy kept them aside."""
    meta = dlq_headers(headers)
    own = [(k, v) for k, v in headers if not k.startswith(PREFIX)]
    if DlqHeader.KEY_REF in meta:
        key = _fetch(meta, "key")
    if DlqHeader.VALUE_REF in meta:
        value = _fetch(meta, "value")
    elif meta.get(DlqHeader.VALUE_NULL) == "true":
        value = None
    if DlqHeader.HEADERS_REF in meta:
        own = [(k, base64.b64decode(v)) for k, v in orjson.loads(_fetch(meta, "headers"))]
    return key, value, own


def _fetch(meta: dict[str, str], part: str) -> bytes:
    ref = meta[DlqHeader(f"{part}-ref")]
    if hashlib.sha256(data := blobs.read(ref)).hexdigest() != meta.get(DlqHeader(f"{part}-sha256")):
        raise blobs.BlobError(f"blob {ref} does not match its SHA-256")
    return data


def dlq_headers(headers: Headers) -> dict[str, str]:
    """The ``podium-dlq-*`` headers of a record, without the prefix."""
    return {k.removeprefix(PREFIX): v.decode() for k, v in headers if k.startswith(PREFIX)}

"""How large a message podium sends may be, decided once.

    MAX_RECORD_BYTES  1 MiB   one Kafka record as the producer sends it (key, value,
                              headers, batch overhead): the producer's
                              ``max_request_size`` and, give or take 12 bytes,
                              Apache Kafka's default ``max.message.bytes``
    MAX_PAYLOAD_BYTES 1000000 the JSON value of a contract message podium publishes
                              (48 KiB left for key, headers and overhead)
    MAX_DATA_BYTES    960000  a task's input, a step's input or output, a task's
                              output, as compact JSON (40 KB left for the fields
                              around it: ids, the step list, an error message)

Data over its limit fails its task with a ``too_large`` error; it never reaches
the outbox. A dead-letter copy over the record limit keeps its body in the blob
store and carries a reference (``podium_shared.dlq``).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from podium_contracts import StepErrorType

MAX_RECORD_BYTES = 1_048_576
MAX_PAYLOAD_BYTES = 1_000_000
MAX_DATA_BYTES = 960_000
TOO_LARGE = StepErrorType.TOO_LARGE  # also a TaskErrorType: the same value


class PayloadTooLarge(ValueError):
    """A message podium was about to publish is over ``MAX_PAYLOAD_BYTES``."""


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """The producer's own upper bound of a record's size (what it checks)."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


def data_size(data: Any) -> int:
    """The size of JSON data as podium encodes it."""
    return len(orjson.dumps(data))


def too_large(what: str, data: Any, limit: int = MAX_DATA_BYTES) -> str | None:
    """Why ``data`` cannot travel in a message, or None when it can."""
    size = data_size(data)
    if size <= limit:
        return None
    return f"{what} is {size} bytes as JSON, over the limit of {limit} bytes"

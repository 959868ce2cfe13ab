"""Whom to tell when a submission is refused: the task a dead-lettered record was
submitting, read from whatever of it is readable.

A record the consume loop could not decode or validate is still, most of the time,
JSON with a ``task_id``; failing that, upstream systems key submissions by task id.
Records that are not submissions (a cancel request) or that name no usable task id
are only dead-lettered: there is nobody to answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from podium_contracts import Headers, TaskSubmitted
from podium_contracts.envelope import STRUCTURED

SUBMITTED = TaskSubmitted.CE_TYPE.rsplit(".", 1)[0] + "."  # any version of the contract
_ID_LIMIT = 200  # TaskSubmitted.task_id's max_length


@dataclass(frozen=True, slots=True)
class Submission:
    task_id: str
    workflow: str | None
    ce_id: str | None
    tenant: str | None = None  # as the record claims it, if it says


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _ID_LIMIT else None


def refused_submission(
    key: bytes | None, value: bytes | None, headers: Headers
) -> Submission | None:
    """The submission a refused record carried, or None if it was none or names no task."""
    attrs: dict[str, str] = {}
    for name, raw in headers:
        attrs[name.lower()] = raw.decode(errors="replace")
    try:
        body: Any = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        body = None
    if attrs.get("content-type", "").lower().startswith(STRUCTURED) and isinstance(body, dict):
        ce_type, ce_id, data = body.get("type"), body.get("id"), body.get("data")
    else:
        ce_type, ce_id, data = attrs.get("ce_type"), attrs.get("ce_id"), body
    data = data if isinstance(data, dict) else {}
    if ce_type is None:
        if "workflow" not in data:  # not even shaped like a submission
            return None
    elif not (isinstance(ce_type, str) and ce_type.startswith(SUBMITTED)):
        return None
    task_id = _text(data.get("task_id"))
    if task_id is None and key:
        try:
            task_id = _text(key.decode())
        except UnicodeDecodeError:
            return None
    if task_id is None:
        return None
    return Submission(task_id, _text(data.get("workflow")), _text(ce_id), _text(data.get("tenant")))

"""Dead letters through the API: a topic's records (viewer) and their replay
(operator), both of the records of the token's tenants only (a record naming no
tenant: tokens of every tenant only). Selection and replay are ``podium dlq``'s own
(``podium_shared.dlq_replay``); every replay, a dry run too, goes into the audit
trail with who asked."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from podium_api import audit
from podium_api.app import Viewer
from podium_api.dead_letters import (
    NoSuchTopic,
    record_view,
    replay_target_allowed,
    report_view,
    task_states,
    visible_records,
)
from podium_api.tokens import Principal
from podium_shared.dlq_records import DlqError, DlqRecord
from podium_shared.dlq_replay import Filters, ReplayReport, select


class DlqSource(Protocol):
    """Where the records come from and go to (``DeadLetters``; a fake in unit tests)."""

    async def records(self, name: str) -> tuple[str, list[DlqRecord], list[str]]: ...

    async def replay(
        self,
        topic: str,
        records: Sequence[DlqRecord],
        *,
        states: dict[str, str],
        to: str | None,
        dry_run: bool,
    ) -> ReplayReport: ...


class DeadLetterRecord(BaseModel):
    id: str = Field(description="the record's ce_id, else its locator")
    locator: str = Field(description="partition:offset")
    partition: int
    offset: int
    time: datetime = Field(description="when it was dead-lettered")
    task_id: str | None
    error_type: str | None
    reason: str | None = Field(description="the DLQ reason (podium-dlq-reason)")
    headers: dict[str, str]
    value: Any = Field(default=None, description="the value as JSON, when it is JSON")
    value_text: str | None = Field(description="the value as text, when it is not JSON")
    value_ref: str | None = Field(
        default=None, description="where the blob store keeps a body too large to copy"
    )


class DeadLetterRecords(BaseModel):
    topic: str
    records: list[DeadLetterRecord]


class ReplayRequest(BaseModel):
    """Which records (every condition given holds) and where; a dry run sends nothing."""

    ids: list[str] | None = Field(
        default=None, max_length=10_000, description="ce_ids or partition:offset locators"
    )
    error_type: str | None = Field(default=None, description="error type, error class or reason")
    task_id: str | None = None
    since: datetime | None = Field(default=None, description="dead-lettered at or after")
    limit: int | None = Field(default=None, ge=1, description="the oldest N of those selected")
    dry_run: bool = True
    to: str | None = Field(
        default=None, description="instead of the original topic: the source of another DLQ"
    )


class ReplayedRecord(BaseModel):
    id: str
    offset: str = Field(description="partition:offset in the DLQ")
    task_id: str | None
    to: str


class SkippedRecord(BaseModel):
    id: str
    offset: str
    task_id: str | None
    why: str


class ReplayResult(BaseModel):
    topic: str
    selected: int
    dry_run: bool
    replayed: list[ReplayedRecord] = Field(description="sent (a dry run: would be sent)")
    skipped: list[SkippedRecord]
    skipped_by_reason: dict[str, int]
    seconds: float


def filters_of(
    *,
    error_type: str | None,
    task_id: str | None,
    since: datetime | None,
    limit: int | None,
    ids: list[str] | None = None,
) -> Filters:
    """``podium dlq``'s filters from the request's (a naive time is UTC)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return Filters(
        error_type=error_type, since=since, task=task_id, ids=frozenset(ids or ()), limit=limit
    )


def audit_detail(body: ReplayRequest, outcome: dict[str, Any] | str) -> dict[str, Any]:
    """What the audit trail keeps of a replay: what was asked, and how it ended (the
    counts and the ids replayed, or the error)."""
    asked = body.model_dump(mode="json", exclude_none=True)
    if isinstance(outcome, str):
        return asked | {"dry_run": body.dry_run, "result": "error", "error": outcome}
    return asked | {
        "dry_run": body.dry_run,
        "result": "dry_run" if body.dry_run else "replayed",
        "selected": outcome["selected"],
        "replayed": len(outcome["replayed"]),
        "skipped": len(outcome["skipped"]),
        "ids": [r["id"] for r in outcome["replayed"]][:100],
    }


def dlq_routes(engine: Engine, dlq: DlqSource | None) -> APIRouter:
    router = APIRouter(tags=["dead letters"])

    def source() -> DlqSource:
        if dlq is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no dead letters here")
        return dlq

    async def read(name: str) -> tuple[str, list[DlqRecord], list[str]]:
        try:
            return await source().records(name)
        except NoSuchTopic as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead-letter topic") from exc
        except DlqError as exc:  # a topic without partitions, a read past its time
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc

    @router.get(
        "/v1/dead-letters/{topic}/records",
        responses={
            404: {"description": "no such dead-letter topic"},
            503: {"description": "this api reads no dead letters, or could not read the topic"},
        },
    )
    async def dead_letter_records(
        who: Viewer,
        topic: str,
        error_type: Annotated[
            str | None, Query(max_length=200, description="error type, error class or reason")
        ] = None,
        task_id: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[datetime | None, Query(description="dead-lettered at or after")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="the oldest N")] = 200,
    ) -> DeadLetterRecords:
        """The records of one dead-letter topic (as ``/v1/dead-letters`` names it, or
        without the prefix) that the token's tenants own, oldest first, with headers."""
        name, records, _ = await read(topic)
        f = filters_of(error_type=error_type, task_id=task_id, since=since, limit=limit)
        chosen = select(visible_records(records, who), f)
        return DeadLetterRecords(
            topic=name, records=[DeadLetterRecord(**record_view(r)) for r in chosen]
        )

    def write_audit(
        who: Principal, target: str, detail: dict[str, Any], tenant: str | None
    ) -> None:
        with engine.begin() as conn:
            audit.record(conn, who, "replay", target, detail, tenant=tenant)

    def write_refusal(who: Principal, target: str) -> None:
        with engine.begin() as conn:
            tenant = None if who.every_tenant else audit.only_tenant(list(who.tenants))
            audit.refused(conn, who, "replay", target, "operator", tenant)

    def states_of(chosen: list[DlqRecord]) -> dict[str, str]:
        with engine.connect() as conn:
            return task_states(conn, (t for r in chosen if (t := r.task_id)))

    @router.post(
        "/v1/dead-letters/{topic}/replay",
        responses={
            400: {"description": "a target that is no dead-letter topic's source"},
            403: {"description": "replay needs the operator role"},
            404: {"description": "no such dead-letter topic"},
            502: {"description": "the broker did not take the records"},
            503: {"description": "this api reads no dead letters, or could not read the topic"},
        },
    )
    async def replay_dead_letters(who: Viewer, topic: str, body: ReplayRequest) -> ReplayResult:
        """Send the selected records of the token's tenants back to their original
        topics, exactly as ``podium dlq replay``: a record whose task the projection
        shows completed or cancelled is skipped, a record replayed twice runs its step
        once. ``dry_run`` (the default) sends nothing and says what would be sent.
        Recorded in the audit trail, a dry run and a refused attempt too."""
        if not who.may("operator"):
            await run_in_threadpool(write_refusal, who, topic)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the operator role")
        name, records, names = await read(topic)
        if not replay_target_allowed(body.to, names):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "not the source of a DLQ topic")
        f = filters_of(
            error_type=body.error_type,
            task_id=body.task_id,
            since=body.since,
            limit=body.limit,
            ids=body.ids,
        )
        chosen = select(visible_records(records, who), f)
        tenant = audit.only_tenant([r.tenant for r in chosen])
        states = await run_in_threadpool(states_of, chosen)
        try:
            report = await source().replay(
                name, chosen, states=states, to=body.to, dry_run=body.dry_run
            )
        except Exception as exc:  # any failure of the send (broker, blob store) is audited
            await run_in_threadpool(write_audit, who, name, audit_detail(body, repr(exc)), tenant)
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"replay failed: {exc}") from exc
        view = report_view(report)
        await run_in_threadpool(write_audit, who, name, audit_detail(body, view), tenant)
        return ReplayResult(**view)

    return router

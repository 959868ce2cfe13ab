"""``GET /v1/audit``: the audit trail (operators): replays of dead letters and
cancels, newest first, of the token's tenants (and the token's own)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine, RowMapping

from podium_api import audit
from podium_api.app import Operator


class AuditEntry(BaseModel):
    at: datetime
    who: str = Field(description="the token's name, else its id")
    token_id: str
    action: str = Field(description=" | ".join(audit.ACTIONS))
    target: str = Field(description="the dead-letter topic replayed from, the task cancelled")
    tenant: str | None = Field(description="the one tenant it touched, when one")
    detail: dict[str, Any] = Field(description="what was asked, and `result`")


class AuditLog(BaseModel):
    entries: list[AuditEntry]


def entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        at=datetime.fromtimestamp(row["at"], UTC),
        who=row["token_name"] or row["token_id"],
        token_id=row["token_id"],
        action=row["action"],
        target=row["target"],
        tenant=row["tenant"],
        detail=row["detail"],
    )


def audit_routes(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["audit"])

    @router.get("/v1/audit")
    def list_audit(who: Operator, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditLog:
        """Who replayed and who cancelled what, newest first (operators only)."""
        with engine.connect() as conn:
            rows = audit.entries(conn, who, limit=limit)
        return AuditLog(entries=[entry(r) for r in rows])

    return router

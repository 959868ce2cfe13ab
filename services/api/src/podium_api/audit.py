"""The audit trail: every replay of dead letters (a dry run too, marked as such) and
every cancel, a refused one too (a token without the operator role: who tried what),
recorded in the api's ``audit`` table in the transaction of the action
it records where there is one, and logged with the principal.

An entry names its one tenant when the action touched one (a cancelled run's; the
replayed records' when they all had the same): a token of some tenants sees the
entries of its tenants and its own; a token of every tenant sees them all."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, RowMapping

from podium_api.state import audit, runs, tokens
from podium_api.tokens import Principal

log = structlog.get_logger("podium_api.audit")

ACTIONS = ("replay", "cancel")


def only_tenant(tenants: list[str | None]) -> str | None:
    """The tenant every one of ``tenants`` is (None when they differ, or none is known)."""
    found = set(tenants)
    if len(found) == 1:
        (one,) = found
        return one
    return None


def record(
    conn: Connection,
    who: Principal,
    action: str,
    target: str,
    detail: dict[str, Any],
    *,
    tenant: str | None = None,
    now: float | None = None,
) -> None:
    """Write one entry (in ``conn``'s transaction) and log it."""
    if action not in ACTIONS:
        raise ValueError(f"not an audited action: {action!r}")
    name = conn.execute(sa.select(tokens.c.name).where(tokens.c.id == who.token_id)).scalar()
    conn.execute(
        audit.insert().values(
            at=time.time() if now is None else now,
            token_id=who.token_id,
            token_name=name or "",
            action=action,
            target=target,
            tenant=tenant,
            detail=detail,
        )
    )
    log.info(
        "audit",
        action=action,
        target=target,
        token_id=who.token_id,
        token_name=name or "",
        role=who.role,
        tenant=tenant,
        **{k: v for k, v in detail.items() if k in ("dry_run", "result", "selected", "replayed")},
    )


def refused(
    conn: Connection, who: Principal, action: str, target: str, needs: str, tenant: str | None
) -> None:
    """A known token's attempt its role does not allow, recorded as ``refused`` (under
    ``tenant``, so that tenant's operators see who tried). An unknown token is not a
    principal: its 401 is in the server's log, not here."""
    detail = {"result": "refused", "reason": f"needs the {needs} role"}
    record(conn, who, action, target, detail, tenant=tenant)


def run_tenant(conn: Connection, who: Principal, task_id: str) -> str | None:
    """The tenant of a run ``who`` may see (None when absent, unknown or not visible:
    an entry of another tenant's task id tells that tenant nothing)."""
    tenant = conn.execute(sa.select(runs.c.tenant).where(runs.c.task_id == task_id)).scalar()
    return tenant if tenant is not None and who.sees(tenant) else None


def visible(who: Principal) -> sa.ColumnElement[bool]:
    if who.every_tenant:
        return sa.true()
    return sa.or_(audit.c.tenant.in_(who.tenants), audit.c.token_id == who.token_id)


def entries(conn: Connection, who: Principal, *, limit: int) -> list[RowMapping]:
    """The newest ``limit`` entries ``who`` may see, newest first."""
    statement = sa.select(audit).where(visible(who)).order_by(audit.c.id.desc()).limit(limit)
    return list(conn.execute(statement).mappings().all())

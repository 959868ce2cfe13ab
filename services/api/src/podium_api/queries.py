"""Reading the projection: a page of runs (filtered, newest first, by cursor) and one
run with its steps. Pure queries over a connection; the HTTP layer only maps them."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from podium_api.state import dead_letter_events, history, runs, steps
from podium_api.tokens import Principal


class BadCursor(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(created_at: float, task_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, task_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("not a cursor from this API") from exc
    if not isinstance(created_at, int | float) or not isinstance(task_id, str):
        raise BadCursor("not a cursor from this API")
    return float(created_at), task_id


@dataclass(frozen=True, slots=True)
class RunFilter:
    status: str | None = None
    workflow: str | None = None
    tenant: str | None = None
    subject: str | None = None
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
    q: str | None = None  # substring of the task id


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def visible(who: Principal) -> sa.ColumnElement[bool]:
    """The runs a principal may see: its tenants' (every run for ``*``)."""
    if who.every_tenant:
        return sa.true()
    return runs.c.tenant.in_(who.tenants)


# Columns only one run's page shows: a list or a stream of summaries leaves them out.
_DETAIL_ONLY = frozenset({"input", "output", "plan"})


def page_query(
    who: Principal, f: RunFilter, *, limit: int, cursor: str | None = None
) -> sa.Select[Any]:
    """The statement of one page (``limit`` + 1 rows: the extra one says there is more)."""
    where: list[sa.ColumnElement[bool]] = [visible(who)]
    if f.status is not None:
        where.append(runs.c.status == f.status)
    if f.workflow is not None:
        where.append(runs.c.workflow == f.workflow)
    if f.tenant is not None:
        where.append(runs.c.tenant == f.tenant)
    if f.subject is not None:
        where.append(runs.c.subject == f.subject)
    if f.since is not None:
        where.append(runs.c.created_at >= f.since)
    if f.until is not None:
        where.append(runs.c.created_at < f.until)
    if f.q:
        where.append(runs.c.task_id.like(f"%{_like_escaped(f.q)}%", escape="\\"))
    if cursor is not None:
        at, task_id = decode_cursor(cursor)
        # Row-value comparison: one index range on (created_at, task_id).
        where.append(sa.tuple_(runs.c.created_at, runs.c.task_id) < sa.tuple_(at, task_id))
    columns = [c for c in runs.c if c.name not in _DETAIL_ONLY]
    return (
        sa.select(*columns)
        .where(*where)
        .order_by(runs.c.created_at.desc(), runs.c.task_id.desc())
        .limit(limit + 1)
    )


def list_runs(
    conn: Connection, who: Principal, f: RunFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[RowMapping], str | None]:
    """One page of runs, newest first, and the cursor of the next page (None at the end)."""
    rows = conn.execute(page_query(who, f, limit=limit, cursor=cursor)).mappings().all()
    page = list(rows[:limit])
    more = len(rows) > limit
    following = encode_cursor(page[-1]["created_at"], page[-1]["task_id"]) if more else None
    return page, following


def get_run(
    conn: Connection, who: Principal, task_id: str
) -> tuple[RowMapping, list[RowMapping]] | None:
    """A run and its steps (in the order they began); None when absent or not visible."""
    run = (
        conn.execute(sa.select(runs).where((runs.c.task_id == task_id) & visible(who)))
        .mappings()
        .first()
    )
    if run is None:
        return None
    rows = (
        conn.execute(
            sa.select(steps)
            .where(steps.c.task_id == task_id)
            .order_by(steps.c.first_at, steps.c.step_id)
        )
        .mappings()
        .all()
    )
    return run, list(rows)


def visible_run(conn: Connection, who: Principal, task_id: str) -> bool:
    """Whether the run exists and the principal may see it."""
    found = conn.execute(
        sa.select(runs.c.task_id).where((runs.c.task_id == task_id) & visible(who))
    ).first()
    return found is not None


def get_history(conn: Connection, who: Principal, task_id: str) -> list[RowMapping] | None:
    """A run's history entries in the order the router wrote them; None when the run
    is absent or not visible."""
    if not visible_run(conn, who, task_id):
        return None
    rows = conn.execute(
        sa.select(history).where(history.c.task_id == task_id).order_by(history.c.seq)
    )
    return list(rows.mappings().all())


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    """What a live stream sends: runs of these (when given), of the principal's tenants."""

    status: str | None = None
    workflow: str | None = None
    tenant: str | None = None


def latest_change(conn: Connection) -> int:
    """The number of the last committed change of any run, or new dead letter (0
    before the first)."""
    last_run = sa.select(sa.func.coalesce(sa.func.max(runs.c.seq), 0)).scalar_subquery()
    last_dead = sa.select(
        sa.func.coalesce(sa.func.max(dead_letter_events.c.seq), 0)
    ).scalar_subquery()
    run, dead = conn.execute(sa.select(last_run, last_dead)).one()
    return max(int(run), int(dead))


def changes_after(
    conn: Connection, who: Principal, f: ChangeFilter, after: int, *, limit: int
) -> list[RowMapping]:
    """The visible runs changed after change ``after``, in the order of their changes
    (each at its latest: a run changed twice since is sent once, as it is now)."""
    where: list[sa.ColumnElement[bool]] = [runs.c.seq > after, visible(who)]
    if f.status is not None:
        where.append(runs.c.status == f.status)
    if f.workflow is not None:
        where.append(runs.c.workflow == f.workflow)
    if f.tenant is not None:
        where.append(runs.c.tenant == f.tenant)
    columns = [c for c in runs.c if c.name not in _DETAIL_ONLY]
    statement = sa.select(*columns).where(*where).order_by(runs.c.seq).limit(limit)
    return list(conn.execute(statement).mappings().all())


def dead_letters_after(
    conn: Connection, who: Principal, f: ChangeFilter, after: int, *, limit: int
) -> list[RowMapping]:
    """The visible new dead letters after change ``after``, in order, each with its
    run's tenant and workflow (a run not yet known: ``*`` tokens only). A stream's
    tenant and workflow filters apply; its status filter is of runs only."""
    where: list[sa.ColumnElement[bool]] = [dead_letter_events.c.seq > after, visible(who)]
    if f.workflow is not None:
        where.append(runs.c.workflow == f.workflow)
    if f.tenant is not None:
        where.append(runs.c.tenant == f.tenant)
    statement = (
        sa.select(dead_letter_events, runs.c.tenant, runs.c.workflow)
        .select_from(
            dead_letter_events.outerjoin(runs, runs.c.task_id == dead_letter_events.c.task_id)
        )
        .where(*where)
        .order_by(dead_letter_events.c.seq)
        .limit(limit)
    )
    return list(conn.execute(statement).mappings().all())

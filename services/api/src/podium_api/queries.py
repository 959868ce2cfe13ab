"""Reading the projection: a page of runs (filtered, newest first, by cursor) and one
run with its steps. Pure queries over a connection; the HTTP layer only maps them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
# ``q`` is a substring of the task id, which no B-tree index serves. A page first
# looks among the next SEARCH_WINDOW runs in the list's order (an index range): a ``q``
# that many runs match fills the page there. Only a rarer one goes to the index of the
# task ids' trigrams (migration 0005), which finds every match at once: a cost that
# grows with the matches, few by then, not with the runs.
SEARCH_WINDOW = 2_000
TRIGRAMS = 3  # a shorter ``q`` has no trigram to look up: it scans (its matches are many)
_TASK_IDS = sa.table("runs_task_ids", sa.column("task_id"))
_KEY = (runs.c.created_at, runs.c.task_id)


def _trigram_phrase(q: str) -> str:
    return '"' + q.replace('"', '""') + '"'


def page_query(
    who: Principal,
    f: RunFilter,
    *,
    limit: int,
    cursor: str | None = None,
    down_to: tuple[float, str] | None = None,
    trigrams: str | None = None,
) -> sa.Select[Any]:
    """The statement of one page (``limit`` + 1 rows: the extra one says there is more).
        ``down_to``: only runs at or above this key; ``trigrams``: the dialect whose index of
        trigrams narrows ``q`` ("sqlite" names its table; "postgresql" fetches every match
    first, see ``_every_match_first``)."""
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
        if trigrams == "sqlite":
            matches = sa.select(_TASK_IDS.c.task_id).where(
                sa.literal_column("runs_task_ids").op("MATCH")(_trigram_phrase(f.q))
            )
            where.append(runs.c.task_id.in_(matches))
    where += _range(cursor, down_to)
    columns = [c for c in runs.c if c.name not in _DETAIL_ONLY]
    if f.q and trigrams == "postgresql":
        return _every_match_first(columns, where, limit)
    return (
        sa.select(*columns)
        .where(*where)
        .order_by(runs.c.created_at.desc(), runs.c.task_id.desc())
        .limit(limit + 1)
    )


def _every_match_first(
    columns: list[sa.Column[Any]], where: list[sa.ColumnElement[bool]], limit: int
) -> sa.Select[Any]:
    """A rare ``q`` on PostgreSQL: every match first (a MATERIALIZED CTE, which the
    planner fetches through the index of trigrams), then the page sorted from them.
    Why not the plain query: its ORDER BY ... LIMIT tempts the planner to walk the
    list's index backwards, filtering every run by the pattern, whenever its estimate
    of the matches is off (always before the table's first ANALYZE): 100 ms at
    100,000 runs, where the index of trigrams and a sort of the matches take 1 ms."""
    matches = sa.select(*columns).where(*where).cte("matches").prefix_with("MATERIALIZED")
    return (
        sa.select(*matches.c)
        .order_by(matches.c.created_at.desc(), matches.c.task_id.desc())
        .limit(limit + 1)
    )


def _range(cursor: str | None, down_to: tuple[float, str] | None) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if cursor is not None:
        at, task_id = decode_cursor(cursor)
        # Row-value comparison: one index range on (created_at, task_id).
        where.append(sa.tuple_(*_KEY) < sa.tuple_(at, task_id))
    if down_to is not None:
        where.append(sa.tuple_(*_KEY) >= sa.tuple_(*down_to))
    return where


def window_end(
    who: Principal, f: RunFilter, cursor: str | None, size: int = SEARCH_WINDOW
) -> sa.Select[Any]:
    """The key of the ``size``-th run below the cursor that every filter but ``q``
    keeps (none: fewer are left): the bottom of the window a search looks in first."""
    unsearched = replace(f, q=None)
    keys = page_query(who, unsearched, limit=0, cursor=cursor).with_only_columns(*_KEY)
    return keys.limit(1).offset(size - 1)


def _search(
    conn: Connection, who: Principal, f: RunFilter, limit: int, cursor: str | None
) -> Sequence[RowMapping]:
    """A page of a ``q`` search: from the window when it fills the page there, else
    through the index of trigrams (a rare ``q``) or, without one, by a scan."""
    end = conn.execute(window_end(who, f, cursor)).first()
    if end is None:  # the window holds every run left: the plain page is a short range
        return conn.execute(page_query(who, f, limit=limit, cursor=cursor)).mappings().all()
    at, task_id = end
    rows = (
        conn.execute(page_query(who, f, limit=limit, cursor=cursor, down_to=(at, task_id)))
        .mappings()
        .all()
    )
    if len(rows) > limit:
        return rows
    dialect = conn.dialect.name if f.q and len(f.q) >= TRIGRAMS else None
    return (
        conn.execute(page_query(who, f, limit=limit, cursor=cursor, trigrams=dialect))
        .mappings()
        .all()
    )


def list_runs(
    conn: Connection, who: Principal, f: RunFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[RowMapping], str | None]:
    """One page of runs, newest first, and the cursor of the next page (None at the end)."""
    if f.q:
        rows = _search(conn, who, f, limit, cursor)
    else:
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

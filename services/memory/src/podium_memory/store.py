"""The memory store: one adapter over SQLAlchemy Core for SQLite and PostgreSQL.

It works on the caller's connection, so a remembered fact commits in the same
transaction as the inbox record and the step result. Every read takes a tenant
and is filtered by it first, then by scope, then by viewer: an entry that
belongs to one subject (a subject's episode in its workflow's scope) is seen
by that subject only, and a reader without a subject sees only the entries
that belong to no one. Expired entries are invisible from the moment they
expire, whether or not the purge has run yet.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from podium_memory.fulltext import match_for
from podium_memory.scopes import Scope, ScopeForbidden, ScopeKind
from podium_memory.state import entries, scope_sizes, sessions, task_owners


class EntryType(enum.StrEnum):
    FACT = "fact"
    TURN = "turn"
    EPISODE = "episode"


def estimate_tokens(text: str) -> int:
    """Approximate model tokens: one per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


@dataclass(frozen=True, slots=True)
class NewEntry:
    scope: Scope
    type: EntryType
    text: str
    idempotency_key: str
    created_at: float
    expires_at: float | None = None
    metadata: dict[str, Any] | None = None
    subject: str | None = None  # who alone sees it in its scope; None: the scope's audience


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    scope: Scope
    type: str
    text: str
    metadata: dict[str, Any]
    tokens: int
    created_at: float
    expires_at: float | None
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope.as_dict(),
            "type": self.type,
            "text": self.text,
            "metadata": self.metadata,
            "tokens": self.tokens,
            "created_at": self.created_at,
            "score": round(self.score, 6),
        }


@dataclass(frozen=True, slots=True)
class SessionState:
    summary: str
    folded_through: int
    folded_turns: int


_COLUMNS = [
    entries.c.id,
    entries.c.tenant,
    entries.c.scope_kind,
    entries.c.scope_id,
    entries.c.type,
    entries.c.text,
    entries.c.metadata,
    entries.c.tokens,
    entries.c.created_at,
    entries.c.expires_at,
]


def _entry(row: Any, score: float = 0.0) -> Entry:
    return Entry(
        id=row.id,
        scope=Scope(row.tenant, ScopeKind(row.scope_kind), row.scope_id),
        type=row.type,
        text=row.text,
        metadata=row.metadata,
        tokens=row.tokens,
        created_at=row.created_at,
        expires_at=row.expires_at,
        score=score,
    )


def _alive(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(entries.c.expires_at.is_(None), entries.c.expires_at > now)


def _in_scopes(tenant: str, scopes: Sequence[Scope]) -> sa.ColumnElement[bool]:
    if any(s.tenant != tenant for s in scopes):
        raise ValueError("every scope of one request belongs to the request's tenant")
    return sa.and_(
        entries.c.tenant == tenant,
        sa.or_(
            sa.false(),
            *(
                sa.and_(entries.c.scope_kind == s.kind.value, entries.c.scope_id == s.id)
                for s in scopes
            ),
        ),
    )


def _visible_to(viewer: str | None) -> sa.ColumnElement[bool]:
    """Entries a reader sees within its scopes: everyone's, and its own subject's."""
    if viewer is None:
        return entries.c.subject.is_(None)
    return sa.or_(entries.c.subject.is_(None), entries.c.subject == viewer)


def trimmed_size(cap: int) -> int:
    """What a scope over its cap is cut back to: 90 % of the cap, so a scope that
    lives at its cap (a busy workflow's episodes) pays for a trim once per tenth
    of the cap, not for every entry."""
    return cap - cap // 10


class MemoryStore:
    """Entries, scope sizes, conversation summaries and task owners on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- writing ---------------------------------------------------------------

    def add(self, new: NewEntry, *, cap: int) -> tuple[int, bool]:
        """Store an entry once per idempotency key; trim its scope to ``cap``.

        Returns the entry's id and whether this call created it. A key another
        tenant used is refused rather than answered with that tenant's entry id.
        """
        existing = self._owned_id(new.idempotency_key, new.scope.tenant)
        if existing is not None:
            return existing, False
        stmt = (
            self._insert(entries)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(entries.c.id)
        )
        params = {
            "tenant": new.scope.tenant,
            "scope_kind": new.scope.kind.value,
            "scope_id": new.scope.id,
            "type": new.type.value,
            "text": new.text,
            "metadata": new.metadata or {},
            "tokens": estimate_tokens(new.text),
            "idempotency_key": new.idempotency_key,
            "created_at": new.created_at,
            "expires_at": new.expires_at,
            "subject": new.subject,
        }
        # Parameters, not .values(): the compiled statement is cached across calls.
        row = self.conn.execute(stmt, params).first()
        if row is None:  # another replica stored the same key a moment ago
            raced = self._owned_id(new.idempotency_key, new.scope.tenant)
            assert raced is not None
            return raced, False
        size = self._resize(new.scope, +1)
        if size > cap:
            oldest = self.conn.execute(
                sa.select(entries.c.id)
                .where(_in_scopes(new.scope.tenant, [new.scope]))
                .order_by(entries.c.created_at, entries.c.id)
                .limit(size - trimmed_size(cap))
            ).scalars()
            self._delete(entries.c.id.in_(list(oldest)))
        return int(row[0]), True

    def _owned_id(self, key: str, tenant: str) -> int | None:
        found = self.conn.execute(
            sa.select(entries.c.id, entries.c.tenant).where(entries.c.idempotency_key == key)
        ).first()
        if found is None:
            return None
        if found.tenant != tenant:
            raise ScopeForbidden("this idempotency key belongs to another tenant's entry")
        return int(found.id)

    def _resize(self, scope: Scope, delta: int) -> int:
        insert = self._insert(scope_sizes)
        stmt = insert.on_conflict_do_update(
            index_elements=["tenant", "scope_kind", "scope_id"],
            set_={"entries": scope_sizes.c.entries + insert.excluded.entries},
        ).returning(scope_sizes.c.entries)
        params = {
            "tenant": scope.tenant,
            "scope_kind": scope.kind.value,
            "scope_id": scope.id,
            "entries": delta,
        }
        return int(self.conn.execute(stmt, params).scalar_one())

    def _delete(self, where: sa.ColumnElement[bool]) -> int:
        """Delete matching entries and keep every affected scope's size right."""
        counts = self.conn.execute(
            sa.select(entries.c.tenant, entries.c.scope_kind, entries.c.scope_id, sa.func.count())
            .where(where)
            .group_by(entries.c.tenant, entries.c.scope_kind, entries.c.scope_id)
        ).all()
        if not counts:
            return 0
        self.conn.execute(entries.delete().where(where))
        for tenant, kind, scope_id, n in counts:
            self._resize(Scope(tenant, ScopeKind(kind), scope_id), -int(n))
        self.conn.execute(scope_sizes.delete().where(scope_sizes.c.entries <= 0))
        return sum(int(n) for *_, n in counts)

    # -- reading ---------------------------------------------------------------

    def size(self, scope: Scope) -> int:
        n = self.conn.execute(
            sa.select(scope_sizes.c.entries).where(
                scope_sizes.c.tenant == scope.tenant,
                scope_sizes.c.scope_kind == scope.kind.value,
                scope_sizes.c.scope_id == scope.id,
            )
        ).scalar()
        return int(n or 0)

    def search(
        self,
        tenant: str,
        scopes: Sequence[Scope],
        terms: list[str],
        *,
        now: float,
        half_life_s: float,
        limit: int,
        types: Sequence[str] = (),
        viewer: str | None = None,
    ) -> list[Entry]:
        """Entries matching any term, best first: relevance x (1 + recency in (0, 1])."""
        if not terms or not scopes:
            return []
        match = match_for(self.dialect, terms)
        age = (sa.literal(now, sa.Float) - entries.c.created_at) / half_life_s
        # Hyperbolic decay needs no exp() (SQLite may lack math functions); clamp clock skew.
        recency = 1.0 + 1.0 / (1.0 + sa.case((age > 0.0, age), else_=0.0))
        score = (match.relevance * recency).label("score")
        stmt = (
            sa.select(*_COLUMNS, score)
            .select_from(match.source)
            .where(match.where, _in_scopes(tenant, scopes), _visible_to(viewer), _alive(now))
            .order_by(score.desc(), entries.c.id.desc())
            .limit(limit)
        )
        if types:
            stmt = stmt.where(entries.c.type.in_(list(types)))
        return [_entry(r, float(r.score)) for r in self.conn.execute(stmt)]

    def latest(
        self,
        tenant: str,
        scopes: Sequence[Scope],
        *,
        now: float,
        limit: int,
        types: Sequence[str] = (),
        viewer: str | None = None,
    ) -> list[Entry]:
        """The newest visible entries of these scopes."""
        if not scopes:
            return []
        stmt = (
            sa.select(*_COLUMNS)
            .where(_in_scopes(tenant, scopes), _visible_to(viewer), _alive(now))
            .order_by(entries.c.created_at.desc(), entries.c.id.desc())
            .limit(limit)
        )
        if types:
            stmt = stmt.where(entries.c.type.in_(list(types)))
        return [_entry(r) for r in self.conn.execute(stmt)]

    # -- forgetting --------------------------------------------------------------

    def forget_ids(
        self,
        tenant: str,
        scopes: Sequence[Scope],
        ids: Sequence[int],
        *,
        viewer: str | None = None,
    ) -> int:
        """Delete these entries if they lie in these scopes of this tenant and the
        viewer sees them."""
        if not ids or not scopes:
            return 0
        return self._delete(
            sa.and_(_in_scopes(tenant, scopes), _visible_to(viewer), entries.c.id.in_(list(ids)))
        )

    def forget_scopes(
        self, tenant: str, scopes: Sequence[Scope], *, viewer: str | None = None
    ) -> int:
        """Delete everything the viewer sees in these scopes, conversation summaries
        included; forgetting a subject's scope also forgets what belongs to that subject
        in shared scopes (its episodes), so erasing a subject leaves none of its tasks."""
        if not scopes:
            return 0
        where = sa.and_(_in_scopes(tenant, scopes), _visible_to(viewer))
        subjects = [s.id for s in scopes if s.kind is ScopeKind.SUBJECT]
        if subjects:
            owned = sa.and_(entries.c.tenant == tenant, entries.c.subject.in_(subjects))
            where = sa.or_(where, owned)
        n = self._delete(where)
        session_ids = [s.id for s in scopes if s.kind is ScopeKind.SESSION]
        if session_ids:
            self.conn.execute(
                sessions.delete().where(
                    sessions.c.tenant == tenant, sessions.c.scope_id.in_(session_ids)
                )
            )
        return n

    def forget_tenant(self, tenant: str) -> int:
        """Erase everything the tenant has: entries, summaries, sizes, task owners."""
        n = self._delete(entries.c.tenant == tenant)
        self.conn.execute(sessions.delete().where(sessions.c.tenant == tenant))
        self.conn.execute(scope_sizes.delete().where(scope_sizes.c.tenant == tenant))
        self.conn.execute(task_owners.delete().where(task_owners.c.tenant == tenant))
        return n

    def purge_expired(self, now: float, *, batch: int, owners_before: float) -> int:
        """Delete up to ``batch`` expired entries (and stale summaries and task owners)."""
        ids = self.conn.execute(
            sa.select(entries.c.id).where(entries.c.expires_at <= now).limit(batch)
        ).scalars()
        n = self._delete(entries.c.id.in_(list(ids)))
        self.conn.execute(sessions.delete().where(sessions.c.expires_at <= now))
        self.conn.execute(task_owners.delete().where(task_owners.c.seen_at < owners_before))
        return n

    # -- conversations -----------------------------------------------------------

    def session(self, scope: Scope, *, now: float) -> SessionState | None:
        row = self.conn.execute(
            sa.select(sessions).where(
                sessions.c.tenant == scope.tenant,
                sessions.c.scope_id == scope.id,
                sa.or_(sessions.c.expires_at.is_(None), sessions.c.expires_at > now),
            )
        ).first()
        if row is None:
            return None
        return SessionState(row.summary, int(row.folded_through), int(row.folded_turns))

    def turns_after(self, scope: Scope, after_id: int, *, now: float) -> list[Entry]:
        """Visible turns of a conversation newer than ``after_id``, oldest first."""
        stmt = (
            sa.select(*_COLUMNS)
            .where(
                _in_scopes(scope.tenant, [scope]),
                entries.c.subject.is_(None),  # turns belong to their session, never a subject
                _alive(now),
                entries.c.type == EntryType.TURN.value,
                entries.c.id > after_id,
            )
            .order_by(entries.c.id)
        )
        return [_entry(r) for r in self.conn.execute(stmt)]

    def save_session(
        self, scope: Scope, state: SessionState, *, now: float, expires_at: float | None
    ) -> None:
        values = {
            "summary": state.summary,
            "folded_through": state.folded_through,
            "folded_turns": state.folded_turns,
            "updated_at": now,
            "expires_at": expires_at,
        }
        stmt = self._insert(sessions).values(tenant=scope.tenant, scope_id=scope.id, **values)
        self.conn.execute(
            stmt.on_conflict_do_update(index_elements=["tenant", "scope_id"], set_=values)
        )

    # -- task owners (for episodes) ----------------------------------------------

    def note_task_owner(self, task_id: str, tenant: str, subject: str | None, now: float) -> None:
        stmt = self._insert(task_owners).values(
            task_id=task_id, tenant=tenant, subject=subject, seen_at=now
        )
        self.conn.execute(stmt.on_conflict_do_nothing(index_elements=["task_id"]))

    def task_owner(self, task_id: str) -> tuple[str, str | None] | None:
        row = self.conn.execute(
            sa.select(task_owners.c.tenant, task_owners.c.subject).where(
                task_owners.c.task_id == task_id
            )
        ).first()
        return None if row is None else (row.tenant, row.subject)

    def drop_task_owner(self, task_id: str) -> None:
        self.conn.execute(task_owners.delete().where(task_owners.c.task_id == task_id))

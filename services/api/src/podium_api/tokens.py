"""Bearer tokens: created once and shown once, stored as their SHA-256 digest.

Why SHA-256 and not bcrypt or argon2: those slow hashes exist to protect guessable
passwords from a stolen table. A token here is 32 random bytes (256 bits); no
guessing attack on its digest is feasible, and a fast digest lets every request be
checked by an indexed lookup instead of a deliberately slow comparison.

Roles are ordered: a viewer reads, a submitter also submits, an operator also
cancels. A token's tenants are a list, or ``["*"]`` for every tenant."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from podium_api.state import tokens

Role = Literal["viewer", "submitter", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "submitter", "operator")
ALL_TENANTS = "*"
PREFIX = "pdm_"  # recognisable in a leaked log or a secret scanner


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's public id, role and tenants."""

    token_id: str
    role: Role
    tenants: tuple[str, ...]

    def may(self, role: Role) -> bool:
        """Whether this principal's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def every_tenant(self) -> bool:
        return ALL_TENANTS in self.tenants

    def sees(self, tenant: str | None) -> bool:
        """Whether a run of ``tenant`` is visible (a run whose tenant is not yet known
        only to a token of every tenant)."""
        return self.every_tenant or (tenant is not None and tenant in self.tenants)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(
    conn: Connection,
    role: Role,
    tenants: list[str],
    name: str = "",
    *,
    now: float | None = None,
) -> tuple[str, str]:
    """Store a new token; returns (its id, the token), the token never stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not tenants or any(not t for t in tenants):
        raise ValueError("a token needs at least one tenant (or '*')")
    token_id = secrets.token_hex(6)
    token = PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        tokens.insert().values(
            id=token_id,
            digest=digest(token),
            role=role,
            tenants=sorted(set(tenants)),
            name=name,
            created_at=time.time() if now is None else now,
        )
    )
    return token_id, token


def authenticate(conn: Connection, token: str) -> Principal | None:
    """The principal of a presented token; None when unknown or revoked."""
    row = conn.execute(
        sa.select(tokens.c.id, tokens.c.role, tokens.c.tenants).where(
            (tokens.c.digest == digest(token)) & tokens.c.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return Principal(token_id=row.id, role=row.role, tenants=tuple(row.tenants))


def revoke(conn: Connection, token_id: str, *, now: float | None = None) -> bool:
    result = conn.execute(
        tokens.update()
        .where((tokens.c.id == token_id) & tokens.c.revoked_at.is_(None))
        .values(revoked_at=time.time() if now is None else now)
    )
    return bool(result.rowcount)

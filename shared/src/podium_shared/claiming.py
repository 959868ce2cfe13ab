"""An outbox relay that claims rows, for replicas sharing one database.

Replicas of a role share its database (an executor pool's effect ledger must be
shared; a router's runs must be seen by whichever replica gets the next event),
so their relays see the same outbox rows. Each relay first claims unclaimed rows
in one statement (``INSERT … SELECT``, serialised by the database), publishes
only its own claims, then deletes them with the rows. A claim older than the
lease is dropped: the rows of a replica killed between claiming and deleting
are published by another replica after ``lease_s``. A relay that is merely slow
past its lease may publish a row twice; consumers deduplicate by ``ce_id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_shared.db import insert_ignore_statement, outbox, outbox_claims
from podium_shared.outbox import OutboxRelay, Sender, Settled, park, send_rows, settle


class ClaimingRelay(OutboxRelay):
    """An ``OutboxRelay`` that sends only the rows it claimed as ``owner``."""

    def __init__(
        self,
        engine: Engine,
        producer: Sender,
        *,
        owner: str,
        lease_s: float = 10.0,
        sweep_interval_s: float = 1.0,
        batch: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(engine, producer, sweep_interval_s=sweep_interval_s, batch=batch)
        self.owner = owner
        self.lease_s = lease_s
        self._clock = clock
        # Built once and executed with parameters: SQLAlchemy then reuses their compiled
        # form, where a statement built per call is compiled (or cache-keyed) each time.
        self._statements = _ClaimStatements.build(engine.dialect.name, batch)

    def claim(self) -> Sequence[Any]:
        """Claim up to one batch of unclaimed rows; return every row this relay holds."""
        now = self._clock()
        with self._engine.begin() as conn:
            statements = self._statements
            conn.execute(statements.expire, {"expired_before": now - self.lease_s})
            conn.execute(statements.claim, {"owner": self.owner, "now": now})
            return conn.execute(statements.mine, {"owner": self.owner}).all()

    async def publish_pending(self) -> int:
        rows = await self._db.run(self.claim)
        if not rows:
            return 0
        done = settle(rows, await send_rows(self._producer, rows))
        await self._db.run(self._settle_rows, done)
        return self._count(done)

    def _settle_rows(self, done: Settled) -> None:
        """Delete the rows sent, park those that never will be, and drop the claims."""
        settled = [r.id for r in done.sent] + [r.id for r, _ in done.parked]
        # Only rows still claimed by us: if our lease lapsed, another relay owns them
        # now (and SQLite may even have reused an id for a new row).
        with self._engine.begin() as conn:
            statements = self._statements
            ours = {"owner": self.owner, "ids": settled}
            still_mine = {row[0] for row in conn.execute(statements.still_mine, ours)}
            parked = [(r, e) for r, e in done.parked if r.id in still_mine]
            park(conn, [r for r, _ in parked], [e for _, e in parked])
            sent = [r.id for r in done.sent if r.id in still_mine]
            if sent:
                conn.execute(statements.delete_rows, {"ids": sent})
            conn.execute(statements.release, ours)


@dataclass(frozen=True)
class _ClaimStatements:
    """A relay's statements, with their values as parameters."""

    expire: Any
    claim: Any
    mine: Any
    still_mine: Any
    delete_rows: Any
    release: Any

    @classmethod
    def build(cls, dialect: str, batch: int) -> _ClaimStatements:
        owner = sa.bindparam("owner", type_=outbox_claims.c.owner.type)
        ids: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
        unclaimed = (
            sa.select(
                outbox.c.id, owner, sa.bindparam("now", type_=outbox_claims.c.claimed_at.type)
            )
            .where(outbox.c.id.not_in(sa.select(outbox_claims.c.outbox_id)))
            .order_by(outbox.c.id)
            .limit(batch)
        )
        columns = ["outbox_id", "owner", "claimed_at"]
        claim = insert_ignore_statement(dialect, outbox_claims).from_select(columns, unclaimed)
        ours = sa.and_(outbox_claims.c.owner == owner, outbox_claims.c.outbox_id.in_(ids))
        return cls(
            expire=outbox_claims.delete().where(
                outbox_claims.c.claimed_at < sa.bindparam("expired_before")
            ),
            claim=claim,
            mine=sa.select(outbox)
            .join(outbox_claims, outbox_claims.c.outbox_id == outbox.c.id)
            .where(outbox_claims.c.owner == owner)
            .order_by(outbox.c.id)
            .limit(batch),
            still_mine=sa.select(outbox_claims.c.outbox_id).where(ours),
            delete_rows=outbox.delete().where(outbox.c.id.in_(ids)),
            release=outbox_claims.delete().where(ours),
        )

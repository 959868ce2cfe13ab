"""The outbox's claims table: where replicas share a PostgreSQL database, each
relay claims the rows it sends, so no row goes out once per replica.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from podium_shared.migrations import create_outbox_claims, drop_outbox_claims

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_claims()


def downgrade() -> None:
    drop_outbox_claims()

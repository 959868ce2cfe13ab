"""The outbox's parking table: a row the broker can never accept is moved there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from podium_shared.migrations import create_outbox_parked, drop_outbox_parked

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_parked()


def downgrade() -> None:
    drop_outbox_parked()

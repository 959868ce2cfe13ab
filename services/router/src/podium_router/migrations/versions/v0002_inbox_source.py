"""The inbox keyed by ce_source and ce_id: two systems may number their events alike.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from podium_shared.migrations import key_inbox_by_source, unkey_inbox_by_source

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key_inbox_by_source()


def downgrade() -> None:
    unkey_inbox_by_source()

"""The executor database's tables, one database per pool shared by its replicas.

- ``effects``: the effect ledger, the recorded result of every completed step by its
  idempotency key (``ledger.py``).
- ``rate_buckets``: the pool's token bucket, one row per pool (``ratelimit.py``).

The shared inbox and outbox tables (and ``outbox_claims``, where each replica's
relay claims the rows it sends) are ``podium_shared.db``'s; the migrations
(``migrations/``) create both sets.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

effects = sa.Table(
    "effects",
    metadata,
    sa.Column("idempotency_key", sa.String(500), primary_key=True),
    sa.Column("task_id", sa.String(200), nullable=False),
    sa.Column("step_id", sa.String(200), nullable=False),
    sa.Column("capability", sa.String(200), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("output", sa.LargeBinary, nullable=False),  # orjson bytes, as published
    sa.Column("usage", sa.JSON, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
)

rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("pool", sa.String(200), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

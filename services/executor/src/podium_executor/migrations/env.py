"""Alembic's entry point for the executor database: its tables and the shared inbox/outbox."""

import podium_executor.ratelimit
import podium_executor.relay  # noqa: F401  (so is the outbox claims table)
from podium_executor.ledger import metadata
from podium_shared import db
from podium_shared.migrations import run_env

run_env([db.metadata, metadata])

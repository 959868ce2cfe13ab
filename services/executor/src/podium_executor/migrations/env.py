"""Alembic's entry point for the executor database: its tables and the shared inbox/outbox."""

from podium_executor.state import metadata
from podium_shared import db
from podium_shared.migrations import run_env

run_env([db.metadata, metadata])

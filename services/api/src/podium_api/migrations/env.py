"""Alembic's entry point for the api database: its tables and the shared inbox/outbox."""

from podium_api.state import metadata
from podium_shared import db
from podium_shared.migrations import run_env

run_env([db.metadata, metadata])

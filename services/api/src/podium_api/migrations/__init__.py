"""The api database's migration history (Alembic); see ``podium_shared.migrations``."""

from pathlib import Path

HISTORY = Path(__file__).resolve().parent

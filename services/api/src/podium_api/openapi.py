"""The checked-in OpenAPI document (``services/api/openapi.json``) and how to write it:
``python -m podium_api openapi --write``; a unit test fails when the app drifts from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from podium_api.app import create_app
from podium_api.service import Commands
from podium_shared import Topics

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.json"


def document() -> dict[str, Any]:
    """The app's OpenAPI 3.1 document (building it touches no database)."""
    return create_app(sa.create_engine("sqlite://"), Commands(Topics())).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def write(path: Path = OPENAPI_PATH) -> None:
    path.write_text(render())

"""The checked-in OpenAPI document is the app's: regenerate it with
``uv run python -m podium_api openapi --write`` when a route or model changes."""

from __future__ import annotations

import json

import pytest

from podium_api import openapi

pytestmark = pytest.mark.unit


def test_the_checked_in_openapi_document_matches_the_app() -> None:
    checked_in = json.loads(openapi.OPENAPI_PATH.read_text())
    assert checked_in == openapi.document(), (
        "services/api/openapi.json is stale: run `uv run python -m podium_api openapi --write`"
    )


def test_it_is_openapi_3_1_and_every_route_but_health_needs_a_bearer_token() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            secured = bool(op.get("security"))
            assert secured == (path != "/healthz"), (method, path)

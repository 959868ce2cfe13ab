"""JSON Schemas generated from the contract models, checked into the repo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from podium_contracts.models import ALL_CONTRACTS

SCHEMA_DIR = Path(__file__).parent / "schemas"


def render_all() -> dict[str, bytes]:
    """File name → schema bytes for every contract, deterministic."""
    out: dict[str, bytes] = {}
    for model in ALL_CONTRACTS:
        schema: dict[str, Any] = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://podium.dev/schemas/{model.CE_TYPE}.json"
        schema["x-ce-type"] = model.CE_TYPE
        out[f"{model.CE_TYPE}.json"] = orjson.dumps(
            schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        ) + b"\n"
    return out


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in render_all().items():
        path = directory / name
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p)

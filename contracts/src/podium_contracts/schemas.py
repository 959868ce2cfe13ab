"""JSON Schemas generated from the contract models, checked into the repo.

``python -m podium_contracts.schemas`` writes every schema and the AsyncAPI
document (``contracts/asyncapi.yaml``). It refuses to overwrite a schema with
a breaking change (see :mod:`podium_contracts.compat`) unless given
``--allow-breaking``; ``--check`` writes nothing and exits 1 when anything on
disk differs from what the code renders (for CI).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from podium_contracts import asyncapi
from podium_contracts.compat import breaking_changes
from podium_contracts.models import ALL_CONTRACTS, Contract

SCHEMA_DIR = Path(__file__).parent / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "uv run python -m podium_contracts.schemas"


def render_schema(model: type[Contract]) -> dict[str, Any]:
    """One contract's JSON Schema as plain data."""
    schema: dict[str, Any] = model.model_json_schema(mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"https://podium.dev/schemas/{model.CE_TYPE}.json"
    schema["x-ce-type"] = model.CE_TYPE
    return schema


def dumps(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def render_all() -> dict[str, bytes]:
    """File name → schema bytes for every contract, deterministic."""
    return {f"{model.CE_TYPE}.json": dumps(render_schema(model)) for model in ALL_CONTRACTS}


def incompatibilities(directory: Path = SCHEMA_DIR) -> dict[str, list[str]]:
    """File name → breaking changes of the current models against the schemas on disk.

    A schema on disk whose contract no longer exists counts as a breaking change:
    a version stays readable until nobody writes it.
    """
    rendered = render_all()
    out: dict[str, list[str]] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name not in rendered:
            out[path.name] = ["contract removed (keep reading the old version)"]
            continue
        old = orjson.loads(path.read_bytes())
        new = orjson.loads(rendered[path.name])
        problems = breaking_changes(old, new)
        if problems:
            out[path.name] = problems
    return out


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """What on disk differs from what the code renders: schema files and asyncapi.yaml."""
    rendered = render_all()
    names = sorted(set(rendered) | {p.name for p in directory.glob("*.json")})
    out: list[str] = []
    for name in names:
        path = directory / name
        if name not in rendered or not path.exists() or path.read_bytes() != rendered[name]:
            out.append(str(path))
    doc = asyncapi.ASYNCAPI_PATH
    if not doc.exists() or doc.read_text(encoding="utf-8") != asyncapi.render():
        out.append(str(doc))
    return out


def write_all(directory: Path = SCHEMA_DIR, *, allow_breaking: bool = False) -> list[Path]:
    """Write every schema; refuse (ValueError) a breaking change unless allowed."""
    problems = incompatibilities(directory) if directory.exists() else {}
    if problems and not allow_breaking:
        lines = [f"  {name}: {p}" for name, ps in problems.items() for p in ps]
        raise ValueError(
            "breaking contract changes (make a new ce_type version instead, or pass "
            "--allow-breaking if nothing reads the old schema yet):\n" + "\n".join(lines)
        )
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_all()
    written = []
    for name, data in rendered.items():
        path = directory / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            written.append(path)
    for path in directory.glob("*.json"):
        if path.name not in rendered:  # only reachable with allow_breaking
            path.unlink()
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Write the JSON Schemas and the AsyncAPI document, or check them (--check)."""
    parser = argparse.ArgumentParser(
        prog="python -m podium_contracts.schemas",
        description="Generate contracts/src/podium_contracts/schemas/*.json and "
        "contracts/asyncapi.yaml from the contract models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files on disk are out of date",
    )
    parser.add_argument(
        "--allow-breaking",
        action="store_true",
        help="overwrite schemas even when the change is breaking",
    )
    args = parser.parse_args(argv)

    if args.check:
        out_of_date = stale()
        for name in out_of_date:
            print(f"out of date: {name}", file=sys.stderr)
        if out_of_date:
            print(f"regenerate with: {REGENERATE}", file=sys.stderr)
        return 1 if out_of_date else 0
    try:
        written = write_all(allow_breaking=args.allow_breaking)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    doc = asyncapi.ASYNCAPI_PATH
    text = asyncapi.render()
    if not doc.exists() or doc.read_text(encoding="utf-8") != text:
        written.append(asyncapi.write(doc))
    for path in written:
        print(path)
    if not written:
        print("schemas and asyncapi.yaml are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

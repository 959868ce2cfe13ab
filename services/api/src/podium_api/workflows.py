"""Workflows and their versions (``GET /v1/workflows``), from the workflow folders.

The router loads its workflows from ``PODIUM_WORKFLOWS`` (':'-separated folders of
YAML) at start-up, and nothing on the topics tells them; the api reads the same
folders, with the same setting, when asked (every image ships them at
``/app/workflows``). It reads only what the console shows (name, version,
description, the steps and what they need) and does not validate the rest: the
router is the judge of whether a workflow runs, and a file it would refuse is still
listed here, with what is wrong with it when it is not even a workflow's shape."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1_048_576  # the router's limit (podium_router.safe_yaml.MAX_BYTES)


def _step(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        return None
    needs = raw.get("needs") or []
    return {
        "id": raw["id"],
        "uses": raw["uses"] if isinstance(raw.get("uses"), str) else None,
        "pool": raw["pool"] if isinstance(raw.get("pool"), str) else None,
        "needs": [n for n in needs if isinstance(n, str)] if isinstance(needs, list) else [],
    }


def read_version(path: Path) -> dict[str, Any]:
    """One file: ``{"name", "version", "description", "file", "steps", "problem"}``;
    ``name`` is the file's stem and ``problem`` says why when it is not a workflow."""
    entry: dict[str, Any] = {
        "name": path.stem,
        "version": 1,
        "description": "",
        "file": path.name,
        "steps": [],
        "problem": None,
    }
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a YAML mapping")
        name, version = raw.get("name"), raw.get("version", 1)
        if not isinstance(name, str) or not name:
            raise ValueError("no name")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError("version is not a positive integer")
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ValueError("no steps")
        description = raw.get("description", "")
        entry |= {
            "name": name,
            "version": version,
            "description": description if isinstance(description, str) else "",
            "steps": [s for s in map(_step, steps) if s is not None],
        }
    except Exception as exc:  # any file in the folder: listing it must not fail the call
        entry["problem"] = f"{type(exc).__name__}: {exc}"[:500]
    return entry


def workflow_files(folders: str) -> list[Path]:
    """The YAML files of ``folders`` (':'-separated), as the router finds them."""
    found: list[Path] = []
    for folder in filter(None, folders.split(":")):
        base = Path(folder)
        if base.is_dir():
            found += sorted([*base.glob("*.yaml"), *base.glob("*.yml")])
    return found


def catalog(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries grouped by workflow name, names sorted, newest version first."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_name.setdefault(e["name"], []).append(e)
    return [
        {
            "name": name,
            "latest": max(v["version"] for v in versions),
            "versions": sorted(versions, key=lambda v: (-v["version"], v["file"])),
        }
        for name, versions in sorted(by_name.items())
    ]


def list_workflows(folders: str) -> list[dict[str, Any]]:
    """Every workflow in ``folders`` with its versions."""
    return catalog(read_version(p) for p in workflow_files(folders))

"""Counting the effects of ``effect.record`` steps: one JSON line per idempotency key
in a file the test names, appended unless the key is already there."""

from __future__ import annotations

import collections
from pathlib import Path

import orjson


def keys_in(path: Path) -> collections.Counter[str]:
    """How many lines each idempotency key has in the effect file (1 each, or a doubled effect)."""
    lines = path.read_bytes().splitlines() if path.exists() else []
    return collections.Counter(orjson.loads(line)["key"] for line in lines if line.strip())

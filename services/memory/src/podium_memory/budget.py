"""Fitting ranked entries into a count limit and an approximate token budget."""

from __future__ import annotations

from collections.abc import Sequence

from podium_memory.store import Entry


def within_budget(ranked: Sequence[Entry], limit: int, max_tokens: int | None) -> list[Entry]:
    """Take entries in rank order; skip one that would overflow the budget, keep looking."""
    chosen: list[Entry] = []
    spent = 0
    for entry in ranked:
        if len(chosen) == limit:
            break
        if max_tokens is not None and spent + entry.tokens > max_tokens:
            continue
        chosen.append(entry)
        spent += entry.tokens
    return chosen

"""Conversations: a sliding window of turns, older turns folded into a summary.

The summarizer is a port. The default is extractive and deterministic (no
network, same input → same summary): it keeps the first sentence of each
folded turn, prefixed by its role, and drops the oldest lines once the summary
would exceed its size limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from podium_memory.store import Entry, SessionState

_SENTENCE = re.compile(r"(.+?[.!?])(?:\s|$)", re.DOTALL)
LINE_CHARS = 200


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    text: str


class Summarizer(Protocol):
    def summarize(self, previous: str, turns: Sequence[Turn]) -> str:
        """Fold these turns (oldest first) into the running summary."""
        ...


def first_sentence(text: str, limit: int = LINE_CHARS) -> str:
    flat = " ".join(text.split())
    m = _SENTENCE.match(flat)
    sentence = m.group(1) if m else flat
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


class ExtractiveSummarizer:
    """One line per folded turn, newest kept when the summary grows past ``max_chars``."""

    def __init__(self, max_chars: int = 2_000) -> None:
        self.max_chars = max_chars

    def summarize(self, previous: str, turns: Sequence[Turn]) -> str:
        lines = [ln for ln in previous.splitlines() if ln]
        lines += [f"{t.role}: {first_sentence(t.text)}" for t in turns]
        while lines and len("\n".join(lines)) > self.max_chars:
            lines.pop(0)
        return "\n".join(lines)


def turn_of(entry: Entry) -> Turn:
    return Turn(role=str(entry.metadata.get("role", "user")), text=entry.text)


def fold(
    state: SessionState, live: Sequence[Entry], window: int, summarizer: Summarizer
) -> tuple[SessionState, list[Entry]]:
    """Keep the last ``window`` live turns; fold the older ones into the summary."""
    if len(live) <= window:
        return state, list(live)
    older, kept = live[: len(live) - window], live[len(live) - window :]
    summary = summarizer.summarize(state.summary, [turn_of(e) for e in older])
    return SessionState(summary, older[-1].id, state.folded_turns + len(older)), list(kept)

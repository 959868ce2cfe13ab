"""Full-text relevance per dialect, from a query reduced to plain words.

A query is never passed to the engine's query language: it is cut into
words of letters and digits, and each word becomes a quoted FTS5 string or a
``plainto_tsquery`` argument (a bound parameter). Operators, column filters,
``NEAR``, ``*``, quotes and parentheses therefore have no meaning here, so a
hostile query can neither raise a syntax error nor widen the search. Words are
OR-ed: relevance ranks, the scope filter bounds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from podium_memory.state import FTS_TABLE, entries

MAX_TERMS = 32
_WORD = re.compile(r"[^\W_]+")  # letters and digits: what unicode61 and to_tsvector index


def query_terms(query: str) -> list[str]:
    """The distinct lower-cased words of a query, at most ``MAX_TERMS``."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(query))
    return list(words)[:MAX_TERMS]


def fts5_match(terms: list[str]) -> str:
    """An FTS5 MATCH expression: each term a quoted string, OR-ed together."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


@dataclass(frozen=True, slots=True)
class Match:
    """What to join, filter and score by for one full-text query."""

    source: Any  # the FROM clause: entries, joined to the index where needed
    where: Any
    relevance: Any  # larger is more relevant, always > 0 for a match


def sqlite_match(terms: list[str]) -> Match:
    fts = sa.table(FTS_TABLE, sa.column("rowid"))
    fts_ref: sa.ColumnElement[Any] = sa.literal_column(FTS_TABLE)
    return Match(
        source=entries.join(fts, fts.c.rowid == entries.c.id),
        where=fts_ref.op("MATCH")(fts5_match(terms)),
        # bm25() is negative, more negative is better; FTS5 clamps idf so it is never 0.
        relevance=-sa.func.bm25(fts_ref),
    )


def postgres_match(terms: list[str]) -> Match:
    tsv: sa.ColumnElement[Any] = sa.literal_column("memory_entries.tsv")
    config: sa.ColumnElement[Any] = sa.literal_column("'english'::regconfig")
    parts: list[sa.ColumnElement[Any]] = [
        sa.func.plainto_tsquery(config, sa.literal(t, sa.Text)) for t in terms
    ]
    query = functools.reduce(lambda a, b: a.op("||")(b), parts)
    return Match(
        source=entries,
        where=tsv.op("@@")(query),
        relevance=sa.func.ts_rank(tsv, query) + 1e-6,
    )


def match_for(dialect: str, terms: list[str]) -> Match:
    """The full-text match for this database; SQLite and PostgreSQL are supported."""
    if dialect == "sqlite":
        return sqlite_match(terms)
    if dialect == "postgresql":
        return postgres_match(terms)
    raise NotImplementedError(f"memory full-text search does not support {dialect!r}")

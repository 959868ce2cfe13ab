"""The memory store's benchmark: recall latency over 100,000 entries in one
tenant and remember throughput, against the store directly (no Kafka), each
beside a plain baseline measured in the same run on the same database."""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_bench.options import PeerOptions
from podium_bench.stats import percentile, ratio
from podium_memory.fulltext import query_terms
from podium_memory.scopes import Scope, ScopeKind
from podium_memory.state import entries as entries_table
from podium_memory.state import metadata
from podium_memory.store import EntryType, MemoryStore, NewEntry
from podium_shared import make_engine

SCOPE = Scope("bench-tenant", ScopeKind.PROJECT, "bench")
HALF_LIFE_S = 7 * 86_400.0


@dataclass
class MemoryBench:
    database: str
    entries: int
    load_s: float
    recall_ms: dict[str, float]
    latest_ms: dict[str, float]
    baseline_select_ms: dict[str, float]
    remember_per_s: float
    baseline_insert_per_s: float
    recalls: int
    remembers: int

    def markdown(self) -> str:
        r, b, latest = self.recall_ms, self.baseline_select_ms, self.latest_ms
        p50x, p99x = ratio(r["p50"], b["p50"]), ratio(r["p99"], b["p99"])
        writes = ratio(self.remember_per_s, self.baseline_insert_per_s)
        remember = f"{self.remember_per_s:,.0f} /s"
        insert = f"{self.baseline_insert_per_s:,.0f} inserts/s"
        return f"""## Memory store ({self.database}, no Kafka)

{self.entries:,} entries in one tenant and one scope (the worst case for recall: every
entry is a candidate), loaded in {self.load_s:.1f} s. Recall: two words from the same
Zipf-like vocabulary as the entries, limit 5, each call on its own connection.
Baseline: a primary-key `SELECT` of one entry, and a one-row `INSERT` into a plain
table, each in its own transaction, on the same database in the same run.

| figure | memory | baseline | ratio |
|---|---|---|---|
| recall p50 (full-text, bm25 x recency) | {r["p50"]:.2f} ms | {b["p50"]:.3f} ms | {p50x:.0f}x |
| recall p99 | {r["p99"]:.2f} ms | {b["p99"]:.3f} ms | {p99x:.0f}x |
| newest-first listing p50 / p99 (empty query) | {latest["p50"]:.2f} / {latest["p99"]:.2f} ms | | |
| remember throughput (one per transaction) | {remember} | {insert} | {writes:.2f} |

Counts: {self.recalls:,} recalls, {self.recalls:,} listings and {self.recalls:,} baseline
selects; {self.remembers:,} remembers and {self.remembers:,} baseline inserts, after the load.
"""


def _vocabulary(rng: random.Random, size: int = 5_000) -> tuple[list[str], list[float]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = list(
        dict.fromkeys(
            "".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)
        )
    )
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    return words, weights


def _timed_ms(calls: int, call: Callable[[int], object]) -> dict[str, float]:
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50": percentile(samples, 50), "p99": percentile(samples, 99)}


def run_memory_bench(
    *,
    entries: int = 100_000,
    recalls: int = 1_000,
    remembers: int = 5_000,
    url: str | None = None,
    workdir: Path | None = None,
    seed: int = 7,
) -> MemoryBench:
    """Measure the store; ``url`` defaults to a fresh SQLite file under ``workdir``."""
    rng = random.Random(seed)
    words, weights = _vocabulary(rng)

    def text() -> str:
        return " ".join(rng.choices(words, weights, k=rng.randint(12, 24)))

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        engine: Engine = make_engine(url or f"sqlite:///{Path(tmp) / 'memory-bench.db'}", metadata)
        try:
            cap = entries + remembers + 1
            now = time.time()
            started = time.perf_counter()
            for start in range(0, entries, 1_000):
                with engine.begin() as conn:
                    store = MemoryStore(conn)
                    for i in range(start, min(start + 1_000, entries)):
                        store.add(
                            NewEntry(
                                SCOPE, EntryType.FACT, text(), f"load-{i}", now - (entries - i)
                            ),
                            cap=cap,
                        )
            load_s = time.perf_counter() - started

            queries = [" ".join(rng.choices(words, weights, k=2)) for _ in range(recalls)]

            def recall(i: int) -> object:
                with engine.connect() as conn:
                    return MemoryStore(conn).search(
                        SCOPE.tenant,
                        [SCOPE],
                        query_terms(queries[i]),
                        now=now,
                        half_life_s=HALF_LIFE_S,
                        limit=5,
                    )

            def latest(_i: int) -> object:
                with engine.connect() as conn:
                    return MemoryStore(conn).latest(SCOPE.tenant, [SCOPE], now=now, limit=5)

            ids = [rng.randint(1, entries) for _ in range(recalls)]
            by_id = sa.select(entries_table.c.text).where(entries_table.c.id == sa.bindparam("id"))

            def select(i: int) -> object:
                with engine.connect() as conn:
                    return conn.execute(by_id, {"id": ids[i]}).scalar()

            recall(0), select(0)  # warm the caches both sides
            recall_ms = _timed_ms(recalls, recall)
            latest_ms = _timed_ms(recalls, latest)
            select_ms = _timed_ms(recalls, select)

            texts = [text() for _ in range(remembers)]
            started = time.perf_counter()
            for t in texts:
                with engine.begin() as conn:
                    MemoryStore(conn).add(
                        NewEntry(SCOPE, EntryType.FACT, t, uuid.uuid4().hex, time.time()), cap=cap
                    )
            remember_per_s = remembers / (time.perf_counter() - started)

            plain = sa.Table(
                "bench_plain",
                sa.MetaData(),
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("text", sa.Text),
            )
            plain.create(engine)
            started = time.perf_counter()
            for t in texts:
                with engine.begin() as conn:
                    conn.execute(plain.insert().values(text=t))
            insert_per_s = remembers / (time.perf_counter() - started)
            return MemoryBench(
                database=engine.dialect.name,
                entries=entries,
                load_s=load_s,
                recall_ms=recall_ms,
                latest_ms=latest_ms,
                baseline_select_ms=select_ms,
                remember_per_s=remember_per_s,
                baseline_insert_per_s=insert_per_s,
                recalls=recalls,
                remembers=remembers,
            )
        finally:
            engine.dispose()


def bench_memory(
    *,
    entries: int = 100_000,
    recalls: int = 1_000,
    remembers: int = 5_000,
    url: str | None = None,
    workdir: Path | None = None,
) -> str:
    """Run the memory benchmark and return its Markdown section."""
    return run_memory_bench(
        entries=entries, recalls=recalls, remembers=remembers, url=url, workdir=workdir
    ).markdown()


def memory_section(opts: PeerOptions) -> dict[str, Any]:
    """The report's memory store section: figures and Markdown."""
    bench = run_memory_bench(
        entries=opts.memory_entries, recalls=opts.memory_recalls, remembers=opts.memory_remembers
    )
    return {"figures": asdict(bench), "markdown": bench.markdown()}


if __name__ == "__main__":
    print(bench_memory())

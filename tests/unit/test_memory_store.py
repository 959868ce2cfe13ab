"""The memory store's shared suite: every test runs against SQLite and PostgreSQL.

PostgreSQL is the test session's scratch database (``database_url`` in
tests/conftest.py), emptied after each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from podium_memory.scopes import Scope, ScopeForbidden, ScopeKind
from podium_memory.state import entries, metadata, scope_sizes
from podium_memory.store import EntryType, MemoryStore, NewEntry, SessionState
from podium_shared import make_engine

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
DAY = 86_400.0


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A fresh memory database: a SQLite file, or the session's PostgreSQL database
    (emptied after each test by the ``database_url`` fixture)."""
    e = make_engine(database_url, metadata)
    try:
        yield e
    finally:
        e.dispose()


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as c:
        yield c


A = Scope("acme", ScopeKind.SUBJECT, "ada")
B = Scope("globex", ScopeKind.SUBJECT, "ada")  # same subject name, another tenant


def add(
    store: MemoryStore,
    scope: Scope,
    text: str,
    *,
    at: float = NOW,
    expires: float | None = None,
    cap: int = 1_000,
    kind: EntryType = EntryType.FACT,
) -> int:
    entry_id, created = store.add(
        NewEntry(scope, kind, text, uuid.uuid4().hex, at, expires, {"n": text[:8]}), cap=cap
    )
    assert created
    return entry_id


def search(store: MemoryStore, scope: Scope, query: str, limit: int = 10) -> list[str]:
    from podium_memory.fulltext import query_terms

    found = store.search(
        scope.tenant, [scope], query_terms(query), now=NOW, half_life_s=DAY, limit=limit
    )
    return [e.text for e in found]


def test_the_schema_has_a_full_text_index(engine: Engine) -> None:
    names = set(sa.inspect(engine).get_table_names())
    assert {"memory_entries", "memory_scope_sizes", "memory_sessions"} <= names
    if engine.dialect.name == "sqlite":
        assert "memory_entries_fts" in names
    else:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("memory_entries")}
        assert "tsv" in columns


def test_an_entry_is_stored_once_per_idempotency_key(conn: Connection) -> None:
    store = MemoryStore(conn)
    new = NewEntry(A, EntryType.FACT, "the sky is green", "t1/s", NOW)
    first = store.add(new, cap=10)
    again = store.add(new, cap=10)
    assert first[1] is True and again == (first[0], False)
    assert store.size(A) == 1


def test_search_finds_by_words_ranks_by_relevance_and_stems(conn: Connection) -> None:
    store = MemoryStore(conn)
    add(store, A, "apples are red and apples are sweet; apples everywhere")
    add(store, A, "one apple a day")
    add(store, A, "bananas are yellow")
    add(store, A, "she was running to the station")
    assert search(store, A, "apples") == [
        "apples are red and apples are sweet; apples everywhere",
        "one apple a day",
    ]
    assert search(store, A, "runs") == ["she was running to the station"]
    assert search(store, A, "cherries") == []
    assert search(store, A, "bananas cherries") == ["bananas are yellow"]  # words are OR-ed


def test_recency_breaks_ties_and_decays(conn: Connection) -> None:
    store = MemoryStore(conn)
    add(store, A, "the deploy key rotated", at=NOW - 30 * DAY)
    add(store, A, "the deploy key rotated again", at=NOW - 60)
    found = store.search(A.tenant, [A], ["deploy"], now=NOW, half_life_s=DAY, limit=5)
    assert [e.text for e in found] == ["the deploy key rotated again", "the deploy key rotated"]
    assert found[0].score > found[1].score > 0


def test_latest_lists_newest_first_within_the_limit(conn: Connection) -> None:
    store = MemoryStore(conn)
    for i in range(5):
        add(store, A, f"note {i}", at=NOW - 100 + i)
    assert [e.text for e in store.latest(A.tenant, [A], now=NOW, limit=3)] == [
        "note 4",
        "note 3",
        "note 2",
    ]


def test_tenants_never_see_each_other(conn: Connection) -> None:
    store = MemoryStore(conn)
    add(store, A, "acme secret launch code")
    add(store, B, "globex secret launch code")
    assert search(store, A, "secret") == ["acme secret launch code"]
    assert search(store, B, "secret") == ["globex secret launch code"]
    assert [e.text for e in store.latest("acme", [A], now=NOW, limit=10)] == [
        "acme secret launch code"
    ]
    with pytest.raises(ValueError, match="tenant"):
        store.latest("acme", [B], now=NOW, limit=10)


HOSTILE = [
    '"',
    'secret" OR "launch',
    "secret OR globex",
    "NEAR(secret launch, 5)",
    "text:secret",
    "memory_entries_fts:secret",
    "secret*",
    "^secret",
    "{text tenant}: secret",
    "* OR 1=1 --",
    "'; DROP TABLE memory_entries; --",
    "AND OR NOT",
    "secret)) OR ((globex",
    "\x00secret\x00",
    "s" * 5_000,
    "secret & globex | !launch",
    "secret:* <-> launch",
]


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_queries_neither_fail_nor_leak(conn: Connection, query: str) -> None:
    store = MemoryStore(conn)
    add(store, A, "acme secret launch code")
    add(store, B, "globex secret launch code")
    found = search(store, A, query)
    assert all(t.startswith("acme") for t in found), found
    assert store.size(A) == 1 and store.size(B) == 1  # nothing was dropped either


def test_expired_entries_are_invisible_at_once_and_purged_later(conn: Connection) -> None:
    store = MemoryStore(conn)
    add(store, A, "short lived fact", expires=NOW - 1)
    add(store, A, "long lived fact", expires=NOW + DAY)
    add(store, A, "forever fact")
    assert sorted(search(store, A, "fact")) == ["forever fact", "long lived fact"]
    assert len(store.latest(A.tenant, [A], now=NOW, limit=10)) == 2
    assert store.size(A) == 3  # still stored until the purge
    assert store.purge_expired(NOW, batch=100, owners_before=0) == 1
    assert store.size(A) == 2
    assert conn.execute(sa.select(sa.func.count()).select_from(entries)).scalar() == 2
    assert store.purge_expired(NOW, batch=100, owners_before=0) == 0


def test_the_size_cap_drops_the_oldest_entries_of_that_scope_only(conn: Connection) -> None:
    store = MemoryStore(conn)
    other = Scope("acme", ScopeKind.PROJECT, "apollo")
    add(store, other, "project fact", cap=3)
    for i in range(5):
        add(store, A, f"fact number {i}", at=NOW + i, cap=3)
    assert [e.text for e in store.latest("acme", [A], now=NOW + 10, limit=10)] == [
        "fact number 4",
        "fact number 3",
        "fact number 2",
    ]
    assert store.size(A) == 3 and store.size(other) == 1
    assert search(store, A, "number") and "fact number 0" not in search(store, A, "number")


def test_forget_by_id_reaches_only_the_given_scopes_of_the_tenant(conn: Connection) -> None:
    store = MemoryStore(conn)
    mine = add(store, A, "mine")
    theirs = add(store, B, "globex notes")
    project = Scope("acme", ScopeKind.PROJECT, "apollo")
    in_project = add(store, project, "project note")
    assert store.forget_ids("acme", [A], [theirs, in_project]) == 0
    assert store.forget_ids("acme", [A], [mine, theirs]) == 1
    assert store.size(A) == 0 and store.size(B) == 1 and store.size(project) == 1
    assert search(store, B, "notes") == ["globex notes"]


def test_forget_scopes_and_tenant_erase_everything_they_name(conn: Connection) -> None:
    store = MemoryStore(conn)
    session = Scope("acme", ScopeKind.SESSION, "subject:ada#s1")
    add(store, A, "fact about ada")
    add(store, session, "hello there", kind=EntryType.TURN)
    store.save_session(session, SessionState("user: hi", 1, 1), now=NOW, expires_at=None)
    store.note_task_owner("task-1", "acme", "ada", NOW)
    add(store, B, "fact about globex ada")
    assert store.forget_scopes("acme", [session]) == 1
    assert store.session(session, now=NOW) is None and store.size(A) == 1
    store.save_session(session, SessionState("user: hi", 1, 1), now=NOW, expires_at=None)
    assert store.forget_tenant("acme") == 1
    assert store.latest("acme", [A, session], now=NOW, limit=10) == []
    assert store.session(session, now=NOW) is None and store.task_owner("task-1") is None
    assert (
        conn.execute(
            sa.select(sa.func.count())
            .select_from(scope_sizes)
            .where(scope_sizes.c.tenant == "acme")
        ).scalar()
        == 0
    )
    assert search(store, B, "ada") == ["fact about globex ada"]


def test_session_state_and_turns(conn: Connection) -> None:
    store = MemoryStore(conn)
    session = Scope("acme", ScopeKind.SESSION, "subject:ada#s1")
    ids = [add(store, session, f"turn {i}", kind=EntryType.TURN, at=NOW + i) for i in range(4)]
    add(store, session, "a fact in the session is not a turn")
    assert store.session(session, now=NOW) is None
    store.save_session(session, SessionState("sum", ids[1], 2), now=NOW, expires_at=NOW + 10)
    assert store.session(session, now=NOW) == SessionState("sum", ids[1], 2)
    assert store.session(session, now=NOW + 11) is None  # expired summaries are invisible too
    assert [e.text for e in store.turns_after(session, ids[1], now=NOW)] == ["turn 2", "turn 3"]


def test_task_owners_are_kept_once_and_purged_when_stale(conn: Connection) -> None:
    store = MemoryStore(conn)
    store.note_task_owner("t1", "acme", "ada", NOW)
    store.note_task_owner("t1", "globex", None, NOW)  # a later step of the same task
    assert store.task_owner("t1") == ("acme", "ada")
    store.drop_task_owner("t1")
    assert store.task_owner("t1") is None
    store.note_task_owner("t2", "acme", None, NOW - 10 * DAY)
    store.purge_expired(NOW, batch=10, owners_before=NOW - DAY)
    assert store.task_owner("t2") is None


def test_a_scope_over_its_cap_is_trimmed_to_nine_tenths_at_once(conn: Connection) -> None:
    # A busy workflow's episodes live at the cap: trimming a tenth at a time keeps
    # that from costing a delete per new entry.
    store = MemoryStore(conn)
    deletes: list[str] = []
    sa.event.listen(
        conn,
        "before_cursor_execute",
        lambda *a: deletes.append(a[2]) if a[2].startswith("DELETE FROM memory_entries ") else None,
    )
    for i in range(21):
        add(store, A, f"fact number {i}", at=NOW + i, cap=20)
    assert store.size(A) == 18 and len(deletes) == 1
    for i in range(21, 23):
        add(store, A, f"fact number {i}", at=NOW + i, cap=20)
    assert store.size(A) == 20 and len(deletes) == 1
    oldest = store.latest("acme", [A], now=NOW + 100, limit=100)[-1]
    assert oldest.text == "fact number 3"


def test_an_entry_owned_by_a_subject_is_seen_and_forgotten_by_that_subject_only(
    conn: Connection,
) -> None:
    store = MemoryStore(conn)
    workflow = Scope("acme", ScopeKind.WORKFLOW, "wf")
    shared = add(store, workflow, "shared episode of wf", kind=EntryType.EPISODE)
    owned, _ = store.add(
        NewEntry(workflow, EntryType.EPISODE, "ada episode of wf", "e-ada", NOW, subject="ada"),
        cap=100,
    )

    def seen(viewer: str | None) -> list[str]:
        latest = store.latest("acme", [workflow], now=NOW, limit=9, viewer=viewer)
        ranked = store.search(
            "acme", [workflow], ["episode"], now=NOW, half_life_s=DAY, limit=9, viewer=viewer
        )
        assert sorted(e.text for e in ranked) == sorted(e.text for e in latest)
        return sorted(e.text for e in latest)

    assert seen("ada") == ["ada episode of wf", "shared episode of wf"]
    assert seen("bob") == ["shared episode of wf"]
    assert seen(None) == ["shared episode of wf"]
    assert search(store, workflow, "episode") == ["shared episode of wf"]  # the default: None
    assert seen("") == ["shared episode of wf"]  # "" is a subject, and not ada
    assert store.size(workflow) == 2  # the cap counts the scope's entries, owned or not
    assert store.forget_ids("acme", [workflow], [owned], viewer="bob") == 0
    assert store.forget_scopes("acme", [workflow], viewer="bob") == 1
    assert seen("ada") == ["ada episode of wf"]
    # Forgetting ada's subject scope forgets what she owns in shared scopes, only hers.
    bob_owned = add(store, workflow, "bob episode", kind=EntryType.EPISODE)
    store.conn.execute(entries.update().where(entries.c.id == bob_owned).values(subject="bob"))
    assert store.forget_scopes("acme", [Scope("acme", ScopeKind.SUBJECT, "ada")]) == 1
    assert seen("ada") == [] and seen("bob") == ["bob episode"]
    assert shared != owned


def test_an_idempotency_key_of_another_tenant_is_refused_not_answered(conn: Connection) -> None:
    store = MemoryStore(conn)
    add_a = NewEntry(A, EntryType.FACT, "acme fact", "task-1/s", NOW)
    entry_id, _ = store.add(add_a, cap=10)
    with pytest.raises(ScopeForbidden, match="another tenant"):
        store.add(NewEntry(B, EntryType.FACT, "globex fact", "task-1/s", NOW), cap=10)
    assert store.add(add_a, cap=10) == (entry_id, False)
    assert store.size(B) == 0

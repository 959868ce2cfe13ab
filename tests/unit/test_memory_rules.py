"""Memory's plain decisions: query words, scopes, budget, folding, retention, settings."""

from __future__ import annotations

import pytest

from podium_contracts import StepRequested
from podium_memory.budget import within_budget
from podium_memory.conversation import ExtractiveSummarizer, Turn, first_sentence, fold
from podium_memory.fulltext import MAX_TERMS, fts5_match, query_terms
from podium_memory.retention import expires_at
from podium_memory.scopes import Scope, ScopeForbidden, ScopeKind, ScopeRef, resolve, resolve_all
from podium_memory.settings import MemorySettings
from podium_memory.store import Entry, SessionState, estimate_tokens

pytestmark = pytest.mark.unit


def step(**kw: object) -> StepRequested:
    fields: dict[str, object] = {"tenant": "acme", "subject": "ada", **kw}
    return StepRequested(
        task_id="t",
        step_id="s",
        workflow="wf",
        capability="memory.recall",
        pool="memory",
        idempotency_key="t/s",
        **fields,  # type: ignore[arg-type]
    )


def entry(i: int, text: str, role: str = "user") -> Entry:
    return Entry(
        id=i,
        scope=Scope("acme", ScopeKind.SESSION, "subject:ada#s"),
        type="turn",
        text=text,
        metadata={"role": role},
        tokens=estimate_tokens(text),
        created_at=0.0,
        expires_at=None,
        score=0.0,
    )


def test_query_words_drop_every_operator() -> None:
    assert query_terms('Tea OR "coffee" NEAR(x*) col:val tea') == [
        "tea",
        "or",
        "coffee",
        "near",
        "x",
        "col",
        "val",
    ]
    assert query_terms("_ - * ( ) \"'") == []
    assert query_terms("cats_like naïve 100%") == ["cats", "like", "naïve", "100"]
    assert len(query_terms(" ".join(f"w{i}" for i in range(100)))) == MAX_TERMS
    assert fts5_match(["tea", "or"]) == '"tea" OR "or"'


def test_scopes_resolve_to_the_task_own_subject_workflow_and_sessions() -> None:
    s = step()
    assert resolve(s, ScopeRef(kind=ScopeKind.SUBJECT)) == Scope("acme", ScopeKind.SUBJECT, "ada")
    assert resolve(s, ScopeRef(kind=ScopeKind.WORKFLOW, id="wf")).id == "wf"
    assert resolve(s, ScopeRef(kind=ScopeKind.SESSION, id="chat")).id == "subject:ada#chat"
    assert (
        resolve(step(subject=None), ScopeRef(kind=ScopeKind.SESSION, id="c")).id == "workflow:wf#c"
    )
    assert resolve_all(s, None) == [Scope("acme", ScopeKind.SUBJECT, "ada")]
    assert resolve_all(step(subject=None), []) == [Scope("acme", ScopeKind.WORKFLOW, "wf")]
    for ref in (
        ScopeRef(kind=ScopeKind.SUBJECT, id="bob"),
        ScopeRef(kind=ScopeKind.WORKFLOW, id="other"),
        ScopeRef(kind=ScopeKind.PROJECT),
    ):
        with pytest.raises(ScopeForbidden):
            resolve(s, ref)
    with pytest.raises(ValueError):
        ScopeRef(kind=ScopeKind.SESSION, id="a#b")  # '#' would blur owner and session


def test_budget_skips_what_does_not_fit_and_keeps_rank_order() -> None:
    ranked = [entry(1, "x" * 40), entry(2, "y" * 400), entry(3, "z" * 8), entry(4, "w" * 8)]
    assert [e.id for e in within_budget(ranked, 10, 13)] == [1, 3]
    assert [e.id for e in within_budget(ranked, 3, None)] == [1, 2, 3]
    assert within_budget(ranked, 5, 1) == []


def test_fold_keeps_the_window_and_summarizes_older_turns_deterministically() -> None:
    live = [
        entry(i, f"Turn {i}. More words here.", "user" if i % 2 else "assistant")
        for i in range(1, 6)
    ]
    summarizer = ExtractiveSummarizer(max_chars=1_000)
    state, kept = fold(SessionState("earlier: hello.", 0, 1), live, 2, summarizer)
    assert [e.id for e in kept] == [4, 5]
    assert state == SessionState(
        "earlier: hello.\nuser: Turn 1.\nassistant: Turn 2.\nuser: Turn 3.", 3, 4
    )
    assert fold(SessionState("", 0, 0), live[:2], 2, summarizer) == (
        SessionState("", 0, 0),
        live[:2],
    )


def test_the_extractive_summary_stays_under_its_limit_newest_kept() -> None:
    summarizer = ExtractiveSummarizer(max_chars=100)
    summary = ""
    for i in range(20):
        summary = summarizer.summarize(summary, [Turn("user", f"message number {i} is here.")])
    assert len(summary) <= 100 and summary.endswith("user: message number 19 is here.")
    assert first_sentence("No stop here " * 40).endswith("…")
    assert first_sentence("  One.  Two. ") == "One."


def test_expiry_is_the_shortest_of_scope_ttl_and_requested_ttl() -> None:
    settings = MemorySettings(ttl_subject_s=100, ttl_project_s=None)
    assert expires_at(settings, "subject", 1_000.0) == 1_100.0
    assert expires_at(settings, "subject", 1_000.0, 10) == 1_010.0
    assert expires_at(settings, "subject", 1_000.0, 500) == 1_100.0
    assert expires_at(settings, "project", 1_000.0) is None
    assert expires_at(settings, "project", 1_000.0, 5) == 1_005.0


def test_settings_come_from_podium_memory_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_MEMORY_TTL_SESSION_S", "2.5")
    monkeypatch.setenv("PODIUM_MEMORY_MAX_ENTRIES_PER_SCOPE", "7")
    monkeypatch.setenv("PODIUM_MEMORY_DATABASE_URL", "sqlite:///ignored.db")  # shared Settings'
    settings = MemorySettings()
    assert settings.ttl_for("session") == 2.5 and settings.max_entries_per_scope == 7
    monkeypatch.setenv("PODIUM_MEMORY_TTL_SESSION_S", "-1")
    with pytest.raises(ValueError):
        MemorySettings()

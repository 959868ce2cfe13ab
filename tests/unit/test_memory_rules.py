"""Memory's plain decisions: query words, scopes, budget, folding, retention, settings."""

from __future__ import annotations

import pytest

from podium_contracts import StepRequested
from podium_memory.budget import within_budget
from podium_memory.conversation import ExtractiveSummarizer, Turn, first_sentence, fold
from podium_memory.episodes import episode_owner
from podium_memory.fulltext import MAX_TERMS, fts5_match, query_terms
from podium_memory.inputs import ForgetInput, RecallInput, RememberInput
from podium_memory.retention import expires_at
from podium_memory.scopes import (
    Placement,
    Scope,
    ScopeForbidden,
    ScopeKind,
    ScopeRef,
    episode_placement,
    resolve,
    resolve_all,
)
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


def test_an_episode_is_placed_by_its_task_owner_never_wider() -> None:
    shared = Scope("acme", ScopeKind.WORKFLOW, "wf")
    assert episode_placement("acme", "ada", "wf") == Placement(shared, "ada")
    assert episode_placement("acme", None, "wf") == Placement(shared, None)
    assert episode_placement("acme", "", "wf") == Placement(shared, "")  # "" is a subject
    # The event names the owner; a noted owner fills in only what the event leaves open.
    assert episode_owner("acme", "ada", None) == ("acme", "ada")
    assert episode_owner("acme", None, None) == ("acme", None)
    assert episode_owner(None, None, ("acme", "ada")) == ("acme", "ada")
    assert episode_owner(None, None, None) is None
    assert episode_owner("acme", None, ("acme", "ada")) == ("acme", "ada")  # narrower
    assert episode_owner("acme", "ada", ("acme", "bob")) == ("acme", "ada")
    assert episode_owner("acme", None, ("globex", "bob")) == ("acme", None)  # not its tenant


def test_an_empty_subject_is_a_subject_for_every_scope_kind() -> None:
    s = step(subject="")
    assert resolve(s, ScopeRef(kind=ScopeKind.SUBJECT)) == Scope("acme", ScopeKind.SUBJECT, "")
    # Before, the session took "" for no subject and shared the workflow's conversations.
    assert resolve(s, ScopeRef(kind=ScopeKind.SESSION, id="c")).id == "subject:#c"
    assert resolve_all(s, None) == [Scope("acme", ScopeKind.SUBJECT, "")]


def test_step_input_cannot_name_a_tenant_or_another_owner() -> None:
    # The scope is the step's tenant and subject (bound by the router), whatever the input says.
    bob = step(subject="bob")
    for ref in (
        {"kind": "subject", "id": "ada"},
        {"kind": "workflow", "id": "payroll"},
        {"kind": "project"},
    ):
        with pytest.raises(ScopeForbidden):
            resolve_all(bob, [ScopeRef(kind=ScopeKind.WORKFLOW), ScopeRef.model_validate(ref)])
    for bad in ({"kind": "subject", "tenant": "globex"}, {"kind": "tenant", "id": "globex"}):
        with pytest.raises(ValueError):
            ScopeRef.model_validate(bad)
    for model, data in (
        (RecallInput, {"query": "x", "tenant": "globex"}),
        (RecallInput, {"query": "x", "subject": "ada"}),
        (RememberInput, {"text": "x", "tenant": "globex"}),
        (ForgetInput, {"scopes": [{"kind": "subject"}], "subject": "ada"}),
    ):
        with pytest.raises(ValueError):
            model.model_validate(data)
    # Every resolved scope is the step's tenant's, and a session is the step's subject's.
    scopes = resolve_all(
        bob,
        [
            ScopeRef(kind=ScopeKind.SUBJECT),
            ScopeRef(kind=ScopeKind.WORKFLOW),
            ScopeRef(kind=ScopeKind.SESSION, id="ada"),
            ScopeRef(kind=ScopeKind.PROJECT, id="p"),
        ],
    )
    assert {s.tenant for s in scopes} == {"acme"}
    assert [s.id for s in scopes] == ["bob", "wf", "subject:bob#ada", "p"]


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
    # A subject's episode lives in the workflow scope and no longer than the subject's data.
    episodes = MemorySettings(ttl_workflow_s=1_000, ttl_subject_s=100)
    subject_ttl = episodes.ttl_for("subject")
    assert expires_at(episodes, "workflow", 1_000.0, subject_ttl) == 1_100.0
    assert expires_at(episodes, "workflow", 1_000.0) == 2_000.0


def test_settings_come_from_podium_memory_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_MEMORY_TTL_SESSION_S", "2.5")
    monkeypatch.setenv("PODIUM_MEMORY_MAX_ENTRIES_PER_SCOPE", "7")
    monkeypatch.setenv("PODIUM_MEMORY_DATABASE_URL", "sqlite:///ignored.db")  # shared Settings'
    settings = MemorySettings()
    assert settings.ttl_for("session") == 2.5 and settings.max_entries_per_scope == 7
    monkeypatch.setenv("PODIUM_MEMORY_TTL_SESSION_S", "-1")
    with pytest.raises(ValueError):
        MemorySettings()

"""Memory use cases, run inside the consumer's transaction so a remembered
fact, the inbox record and the step result commit together."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError

from podium_contracts import (
    StepCompleted,
    StepError,
    StepErrorType,
    StepFailed,
    StepRequested,
    TaskCompleted,
    TaskFailed,
)
from podium_memory.budget import within_budget
from podium_memory.conversation import ExtractiveSummarizer, Summarizer, fold
from podium_memory.episodes import episode, episode_owner, ran_memory_step
from podium_memory.fulltext import query_terms
from podium_memory.inputs import ConversationInput, ForgetInput, RecallInput, RememberInput
from podium_memory.retention import expires_at
from podium_memory.scopes import (
    ScopeForbidden,
    ScopeKind,
    ScopeRef,
    default_scope,
    episode_placement,
    resolve,
    resolve_all,
)
from podium_memory.settings import MemorySettings
from podium_memory.store import EntryType, MemoryStore, NewEntry, SessionState
from podium_shared import Topics, UnitOfWork, metrics, telemetry
from podium_shared.limits import too_large

log = structlog.get_logger(__name__)

Operation = Callable[[MemoryStore, StepRequested, float], dict[str, Any]]


class Memory:
    """The memory capabilities and the episode recorder."""

    def __init__(
        self,
        topics: Topics,
        settings: MemorySettings | None = None,
        summarizer: Summarizer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.settings = settings or MemorySettings()
        self.summarizer = summarizer or ExtractiveSummarizer(self.settings.summary_max_chars)
        self.clock = clock
        self.operations: dict[str, Operation] = {
            "memory.remember": self.remember,
            "memory.recall": self.recall,
            "memory.forget": self.forget,
            "memory.conversation": self.conversation,
        }

    # -- capabilities ------------------------------------------------------------

    def remember(self, store: MemoryStore, step: StepRequested, now: float) -> dict[str, Any]:
        """Store a fact in the step's scope, once per idempotency key."""
        data = RememberInput.model_validate(step.input)
        scope = resolve(step, data.scope) if data.scope else default_scope(step)
        entry_id, _ = store.add(
            NewEntry(
                scope=scope,
                type=EntryType.FACT,
                text=data.text,
                metadata=data.metadata,
                idempotency_key=step.idempotency_key,
                created_at=now,
                expires_at=expires_at(self.settings, scope.kind.value, now, data.ttl_s),
            ),
            cap=self.settings.max_entries_per_scope,
        )
        return {"id": entry_id, "scope": scope.as_dict()}

    def recall(self, store: MemoryStore, step: StepRequested, now: float) -> dict[str, Any]:
        """The most relevant visible entries of the step's scopes, within limit and budget."""
        data = RecallInput.model_validate(step.input)
        scopes = resolve_all(step, data.scopes)
        limit = data.limit or self.settings.recall_limit
        # With a token budget an entry may be skipped, so look further down the ranking.
        fetch = limit * 4 if data.max_tokens else limit
        types = [t.value for t in data.types or []]
        terms = query_terms(data.query)
        if terms:
            ranked = store.search(
                step.tenant,
                scopes,
                terms,
                now=now,
                half_life_s=self.settings.recency_half_life_s,
                limit=fetch,
                types=types,
                viewer=step.subject,
            )
        else:
            ranked = store.latest(
                step.tenant, scopes, now=now, limit=fetch, types=types, viewer=step.subject
            )
        return {"entries": [e.as_dict() for e in within_budget(ranked, limit, data.max_tokens)]}

    def forget(self, store: MemoryStore, step: StepRequested, now: float) -> dict[str, Any]:
        """Erase by ids, by scopes, or the whole tenant (which must be the step's own)."""
        data = ForgetInput.model_validate(step.input)
        if data.tenant is not None:
            if data.tenant != step.tenant:
                raise ScopeForbidden("a step may forget only its own tenant")
            return {"forgotten": store.forget_tenant(step.tenant)}
        scopes = resolve_all(step, data.scopes)
        if data.ids:
            forgotten = store.forget_ids(step.tenant, scopes, data.ids, viewer=step.subject)
            return {"forgotten": forgotten}
        return {"forgotten": store.forget_scopes(step.tenant, scopes, viewer=step.subject)}

    def conversation(self, store: MemoryStore, step: StepRequested, now: float) -> dict[str, Any]:
        """Append a turn (optional), fold what left the window, return window and summary."""
        data = ConversationInput.model_validate(step.input)
        scope = resolve(step, ScopeRef(kind=ScopeKind.SESSION, id=data.session))
        window = data.window or self.settings.conversation_window
        expiry = expires_at(self.settings, ScopeKind.SESSION.value, now)
        if data.append is not None:
            store.add(
                NewEntry(
                    scope=scope,
                    type=EntryType.TURN,
                    text=data.append.text,
                    metadata={"role": data.append.role},
                    idempotency_key=step.idempotency_key,
                    created_at=now,
                    expires_at=expiry,
                ),
                cap=self.settings.max_entries_per_scope,
            )
        state = store.session(scope, now=now) or SessionState("", 0, 0)
        live = store.turns_after(scope, state.folded_through, now=now)
        folded, kept = fold(state, live, window, self.summarizer)
        if data.append is not None or folded != state:
            store.save_session(scope, folded, now=now, expires_at=expiry)
        return {
            "session": data.session,
            "summary": folded.summary,
            "folded_turns": folded.folded_turns,
            "turns": [
                {"id": e.id, "role": e.metadata.get("role", "user"), "text": e.text} for e in kept
            ],
        }

    # -- edges -------------------------------------------------------------------

    def run_step(self, step: StepRequested, uow: UnitOfWork) -> None:
        """Run one memory step and queue its StepCompleted or StepFailed."""
        started = time.perf_counter()
        now = self.clock()
        store = MemoryStore(uow.conn)
        store.note_task_owner(step.task_id, step.tenant, step.subject, now)
        operation = self.operations.get(step.capability)
        error: StepError | None = None
        output: Any = None
        if operation is None:
            error = StepError(
                type=StepErrorType.UNKNOWN_CAPABILITY,
                message=f"memory has no capability {step.capability!r}",
            )
        else:
            with telemetry.span(
                "memory." + step.capability.removeprefix("memory."),
                **{
                    "podium.task_id": step.task_id,
                    "podium.step_id": step.step_id,
                    "podium.memory.operation": step.capability,
                    "podium.attempt": step.attempt,
                },
            ):
                try:
                    output = operation(store, step, now)
                    # A recall of many large entries could make a StepCompleted that
                    # can never be sent: fail the step saying so instead.
                    why = too_large(f"{step.capability}: output", output)
                    if why:
                        error = StepError(type=StepErrorType.TOO_LARGE, message=why)
                    elif telemetry.enabled():
                        telemetry.annotate(**_memory_attributes(output))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    message = f"{where}: {first['msg']}" if where else str(first["msg"])
                    error = StepError(type=StepErrorType.INVALID_INPUT, message=message)
                except ScopeForbidden as exc:
                    error = StepError(type=StepErrorType.FORBIDDEN, message=str(exc))
                if error is not None:
                    telemetry.mark_failed(error.type, error.message)
        elapsed = (time.perf_counter() - started) * 1000
        metrics.step_ran(
            step.capability, step.pool, "failed" if error else "completed", elapsed / 1000
        )
        if error is None:
            uow.publish(
                self.topics.step_results,
                StepCompleted.for_step(step, output=output, duration_ms=elapsed),
                key=step.task_id,
            )
            return
        uow.publish(
            self.topics.step_failures,
            StepFailed.for_step(step, error=error, duration_ms=elapsed),
            key=step.task_id,
        )

    def record_episode(self, event: TaskCompleted | TaskFailed, uow: UnitOfWork) -> bool:
        """Remember what a finished task did in its workflow's scope, seen only by its
        subject if it had one; False if the task ran no memory step (nothing could
        recall the episode) or its tenant is unknown."""
        store = MemoryStore(uow.conn)
        ran = ran_memory_step(event)
        if ran is False:
            return False
        # The noted owner matters where the event leaves the tenant or subject open, and
        # says whether a failed task ran a memory step (noted by run_step).
        known = ran and event.tenant is not None and event.subject is not None
        noted = None if known else store.task_owner(event.task_id)
        if ran is None and noted is None:
            log.debug("episode not recorded: the task ran no memory step", task_id=event.task_id)
            return False
        owner = episode_owner(event.tenant, event.subject, noted)
        if owner is None:
            log.info("episode not recorded: tenant unknown", task_id=event.task_id)
            return False
        tenant, subject = owner
        now = self.clock()
        place = episode_placement(tenant, subject, event.workflow)
        # A subject's episode is that subject's data too: it lives no longer than either.
        subject_ttl = None if subject is None else self.settings.ttl_for(ScopeKind.SUBJECT.value)
        text, meta = episode(event)
        store.add(
            NewEntry(
                scope=place.scope,
                type=EntryType.EPISODE,
                text=text,
                metadata=meta,
                idempotency_key=f"episode:{event.task_id}",
                created_at=now,
                expires_at=expires_at(self.settings, place.scope.kind.value, now, subject_ttl),
                subject=place.subject,
            ),
            cap=self.settings.max_entries_per_scope,
        )
        store.drop_task_owner(event.task_id)
        return True


def _memory_attributes(output: dict[str, Any]) -> dict[str, telemetry.AttrValue]:
    """What a memory operation did, for its span: scope kind and hits."""
    try:
        return _describe(output)
    except Exception:  # telemetry never fails a step
        return {}


def _describe(output: dict[str, Any]) -> dict[str, telemetry.AttrValue]:
    out: dict[str, telemetry.AttrValue] = {}
    scope = output.get("scope")
    if isinstance(scope, dict):
        out["podium.memory.scope_kind"] = str(scope.get("kind"))
    entries = output.get("entries")
    if isinstance(entries, list):
        out["podium.memory.hits"] = len(entries)
        kinds = {str(e["scope"]["kind"]) for e in entries if isinstance(e.get("scope"), dict)}
        out["podium.memory.scope_kinds"] = sorted(kinds)
    if "forgotten" in output:
        out["podium.memory.forgotten"] = int(output["forgotten"])
    if "turns" in output:
        out["podium.memory.scope_kind"] = "session"
        out["podium.memory.hits"] = len(output["turns"])
    return out

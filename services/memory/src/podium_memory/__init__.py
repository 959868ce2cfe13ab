"""podium memory: scoped, durable, bounded memory for workflows."""

from podium_memory.conversation import ExtractiveSummarizer, Summarizer, Turn
from podium_memory.scopes import Scope, ScopeForbidden, ScopeKind, ScopeRef
from podium_memory.service import Memory
from podium_memory.settings import MemorySettings
from podium_memory.store import Entry, EntryType, MemoryStore, NewEntry, SessionState

__all__ = [
    "Entry",
    "EntryType",
    "ExtractiveSummarizer",
    "Memory",
    "MemorySettings",
    "MemoryStore",
    "NewEntry",
    "Scope",
    "ScopeForbidden",
    "ScopeKind",
    "ScopeRef",
    "SessionState",
    "Summarizer",
    "Turn",
]

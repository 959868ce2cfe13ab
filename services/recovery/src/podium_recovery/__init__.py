"""podium recovery: retry policies, backoff timers, fallbacks, dead-lettering."""

from podium_recovery.decisions import Abandon, Decision, Retry, Why, backoff_delay, decide
from podium_recovery.service import Recovery
from podium_recovery.settings import RecoverySettings, RetryCaps

__all__ = [
    "Abandon",
    "Decision",
    "Recovery",
    "RecoverySettings",
    "Retry",
    "RetryCaps",
    "Why",
    "backoff_delay",
    "decide",
]

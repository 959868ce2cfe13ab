"""podium recovery: retry policies, backoff timers, fallbacks, dead-lettering."""

from podium_recovery.decisions import Abandon, Decision, Retry, Why, backoff_delay, decide
from podium_recovery.service import Recovery
from podium_recovery.settings import RecoverySettings

__all__ = [
    "Abandon",
    "Decision",
    "Recovery",
    "RecoverySettings",
    "Retry",
    "Why",
    "backoff_delay",
    "decide",
]

"""podium's shared runtime: settings, Kafka wiring, outbox and inbox, DLQ, embedded broker."""

from podium_shared.consumer import ConsumeLoop
from podium_shared.db import make_engine
from podium_shared.dlq import DlqReason, dead_letter, dlq_headers
from podium_shared.embedded import EmbeddedBroker
from podium_shared.outbox import OutboxRelay, OutgoingMessage, UnitOfWork
from podium_shared.runtime import ServiceSpec, run_service
from podium_shared.settings import Settings
from podium_shared.settle import Handler, Refusal
from podium_shared.topics import Topics, TopicSpec

__all__ = [
    "ConsumeLoop",
    "DlqReason",
    "EmbeddedBroker",
    "Handler",
    "OutboxRelay",
    "OutgoingMessage",
    "Refusal",
    "ServiceSpec",
    "Settings",
    "TopicSpec",
    "Topics",
    "UnitOfWork",
    "dead_letter",
    "dlq_headers",
    "make_engine",
    "run_service",
]

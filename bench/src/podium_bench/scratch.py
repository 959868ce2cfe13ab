"""A section's own corner of the broker: a fresh home and topic prefix, and a local
broker of its own (the kind ``--broker`` chose, as `podium up` starts it) unless the
settings name one (PODIUM_KAFKA_BOOTSTRAP)."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from podium.stack import start_local_broker
from podium_shared import Settings


@contextlib.contextmanager
def scratch_broker(settings: Settings, name: str, prefix: str) -> Iterator[Settings]:
    """Settings with home ``podium-bench-<name>-*`` and topic prefix ``<prefix><hex>``,
    on their own local broker (Tansu or Apache Kafka, as ``settings.broker`` says) when
    none is named; the broker stops on exit."""
    home = Path(tempfile.mkdtemp(prefix=f"podium-bench-{name}-"))
    settings = settings.model_copy(
        update={"home": home, "topic_prefix": f"{prefix}{uuid.uuid4().hex[:6]}"}
    )
    broker = None if settings.kafka_bootstrap else start_local_broker(settings)
    try:
        if broker is not None:
            settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        yield settings
    finally:
        if broker is not None:
            broker.stop()

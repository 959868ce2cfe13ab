"""aiokafka clients built from settings, and topic creation."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog
from aiokafka import (
    AIOKafkaClient,
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.protocol.transaction import InitProducerIdRequest

from podium_shared import records
from podium_shared.limits import MAX_RECORD_BYTES
from podium_shared.settings import Settings
from podium_shared.topics import TopicSpec

log = structlog.get_logger(__name__)


def _common(settings: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.require_bootstrap(),
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        opts["sasl_mechanism"] = settings.sasl_mechanism
        opts["sasl_plain_username"] = settings.sasl_username
        opts["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = ssl_context(settings)
    return opts


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every client: verifies the broker against ``ssl_cafile`` (else
    the system's roots) and its host name, and presents ``ssl_certfile`` for mTLS."""
    context = ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )
    if settings.ssl_certfile and settings.ssl_keyfile:
        context.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile))
    return context


class BrokerRefused(Exception):
    """The broker refused who we are (a wrong password, an unknown user, a certificate
    it or we do not trust): retrying will not help, so a service exits with this."""


async def refused_because(settings: Settings) -> BrokerRefused | None:
    """Why the first bootstrap broker refuses these credentials, or None when it does not
    (or is not answering at all). aiokafka's bootstrap swallows the reason into a
    generic KafkaConnectionError; one direct connection finds it again."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    host, _, port = settings.require_bootstrap().split(",")[0].rpartition(":")
    opts = _common(settings)
    del opts["bootstrap_servers"]
    try:
        conn = await create_conn(host, int(port), request_timeout_ms=5000, **opts)
    except (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError) as e:
        return BrokerRefused(
            f"Kafka at {host}:{port} refused user {settings.sasl_username!r} "
            f"({settings.sasl_mechanism}): {e}"
            " - check PODIUM_SASL_USERNAME and PODIUM_SASL_PASSWORD_FILE"
        )
    except ssl.SSLError as e:
        return tls_refusal(f"{host}:{port}", e)
    except KafkaConnectionError as e:
        # With TLS 1.3 the broker checks our certificate after our side of the handshake
        # is done: its alert arrives on the first read, which aiokafka reports as a closed
        # connection caused by the SSLError.
        # Only an alert: a connection cut mid-handshake (a broker restarting) is no refusal.
        cause = e.__cause__
        if isinstance(cause, ssl.SSLError) and "ALERT" in (getattr(cause, "reason", None) or ""):
            return tls_refusal(f"{host}:{port}", cause)
        return None
    except (OSError, TimeoutError, KafkaError):
        return None  # not answering (yet): the caller's retries are for that
    conn.close()
    return None


def tls_refusal(address: str, error: ssl.SSLError) -> BrokerRefused:
    """What a failed TLS handshake means: an alert from the broker is its refusal of our
    client certificate (or of none); anything else is our refusal of its certificate."""
    reason = getattr(error, "reason", None) or str(error)
    if "ALERT" in reason:
        return BrokerRefused(
            f"Kafka at {address} refused our client certificate ({reason}) - check "
            "PODIUM_SSL_CERTFILE/KEYFILE: a certificate signed by a CA the brokers trust"
        )
    return BrokerRefused(
        f"TLS with Kafka at {address} failed: {reason} - check PODIUM_SSL_CAFILE "
        "(the CA that signed the broker's certificate) and PODIUM_SSL_CERTFILE/KEYFILE"
    )


def make_admin(settings: Settings, client_id: str) -> AIOKafkaAdminClient:
    """An admin client (not started)."""
    return AIOKafkaAdminClient(**_common(settings), client_id=client_id)


def make_producer(settings: Settings, client_id: str) -> AIOKafkaProducer:
    """A producer with ``acks=all``; idempotent when the setting is ``true`` (``auto``
    must have been resolved by ``resolve_idempotence`` first, else it stays off)."""
    return AIOKafkaProducer(
        **_common(settings),
        client_id=client_id,
        acks="all",
        max_request_size=MAX_RECORD_BYTES,
        enable_idempotence=settings.producer_idempotence == "true",
        linger_ms=settings.producer_linger_ms,
    )


async def broker_grants_producer_ids(settings: Settings) -> bool:
    """Whether the cluster hands out producer ids (InitProducerId without a
    transactional id), which idempotent producing needs. Apache Kafka does; Tansu
    answers with an error, and aiokafka's idempotent producer then fails every send."""
    client = AIOKafkaClient(**_common(settings), client_id="podium-probe")
    try:
        await client.bootstrap()
        for _ in range(100):
            node = client.get_random_node()
            response = await client.send(node, InitProducerIdRequest(None, 60_000))
            code = int(response.error_code)
            # Kafka answers COORDINATOR_LOAD_IN_PROGRESS / _NOT_AVAILABLE for a few
            # seconds after it starts; ask again. Anything else is the answer.
            if code not in (
                CoordinatorLoadInProgressError.errno,
                CoordinatorNotAvailableError.errno,
            ):
                return code == 0
            await asyncio.sleep(0.2)
        return False
    except KafkaError as e:
        log.info("producer id probe failed; idempotence stays off", error=repr(e))
        return False
    finally:
        await client.close()


async def resolve_idempotence(settings: Settings) -> Settings:
    """``settings`` with ``producer_idempotence`` decided: ``auto`` becomes what the
    broker answers; ``true`` and ``false`` are kept as the operator set them."""
    if settings.producer_idempotence != "auto":
        return settings
    granted = await broker_grants_producer_ids(settings)
    return settings.model_copy(update={"producer_idempotence": "true" if granted else "false"})


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, client_id: str
) -> AIOKafkaConsumer:
    records.install()  # a header key that is not UTF-8 must not fail the fetch
    return AIOKafkaConsumer(
        *topics,
        **_common(settings),
        group_id=group_id,
        client_id=client_id,
        # Offsets are committed by us, after the transaction that recorded the effect.
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_records=settings.max_batch,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )


async def ensure_topics(settings: Settings, specs: list[TopicSpec], *, attempts: int = 30) -> None:
    """Create the topics that do not exist yet, with their configs; existing ones are
    left alone (change their configs with the cluster's tools)."""
    admin = AIOKafkaAdminClient(**_common(settings), client_id="podium-admin")
    for attempt in range(attempts):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            # A refusal of our credentials is final: one clear error now, no retry storm.
            refused = await refused_because(settings)
            if refused is not None:
                await admin.close()
                raise refused from None
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return
        new = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=dict(s.configs),
            )
            for s in missing
        ]
        response = await admin.create_topics(new)
        # The response carries an error code per topic instead of raising.
        failed = [
            f"{topic}: {for_code(code).__name__} {' '.join(str(m) for m in rest if m)}".strip()
            for topic, code, *rest in response.topic_errors
            if code not in (0, TopicAlreadyExistsError.errno)  # created concurrently: fine
        ]
        if failed:
            raise RuntimeError(f"could not create topics: {'; '.join(failed)}")
        log.debug("topics created", topics=[s.name for s in missing])
    finally:
        await admin.close()


async def read_to_end(
    consumer: AIOKafkaConsumer,
    ends: Mapping[TopicPartition, int],
    *,
    deadline: float | None = None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the assigned partitions ``ends`` names, from each one's position
    to its end offset; ``TimeoutError`` once ``time.monotonic()`` passes ``deadline``.

    Tansu 0.6 answers ListOffsets(latest) with the last batch's *base* offset, so an end
    offset is a floor: a partition is done once past it and two polls in a row brought
    nothing more (on Kafka that costs one empty poll)."""
    idle = dict.fromkeys(ends, 0)
    while idle:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        batches = await consumer.getmany(*idle, timeout_ms=100)
        for recs in batches.values():
            for r in recs:
                yield r
        for tp in list(idle):
            if batches.get(tp):
                idle[tp] = 0
            elif await consumer.position(tp) >= ends[tp]:
                idle[tp] += 1
                if idle[tp] >= 2:
                    del idle[tp]

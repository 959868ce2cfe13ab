"""Typed settings, read once from ``PODIUM_*`` environment variables and passed in."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from podium_shared.secrets import fill_from_files, read_secret_file, reveal
from podium_shared.topics import DLQ_RETENTION_MS

ServiceName = Literal["router", "executor", "memory", "recovery", "api"]
ROLES: tuple[ServiceName, ...] = ("router", "executor", "memory", "recovery", "api")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODIUM_", extra="ignore")

    home: Path = Field(default=Path(".podium"), description="local data: databases, logs, spans")
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; unset means a local broker"
    )
    # Which kind of broker this is: the local one `podium up` starts when no bootstrap is
    # set (tansu: the embedded binary; kafka: Apache Kafka fetched by Maven), and whose
    # defaults apply below. A cluster named by PODIUM_KAFKA_BOOTSTRAP is Kafka unless
    # PODIUM_BROKER=tansu says otherwise.
    broker: Literal["tansu", "kafka"] | None = None
    topic_prefix: str = Field(default="podium", pattern=r"^[A-Za-z0-9._-]+$")
    # Tansu does not wake long polls when data arrives, so a short wait is the
    # difference between ~3 ms and ~200 ms per hop there; real Kafka answers a fetch as
    # soon as data arrives, so a long wait costs nothing and saves idle polling.
    # Unset: 5 ms on Tansu, 500 ms on Kafka.
    fetch_max_wait_ms: int = Field(default=-1, ge=-1, le=10_000)
    # Tansu only: the longest fetch wait of a consumer that has seen no record for a
    # second (podium_shared.idle): the first record after idleness is late by at most
    # this on each idle hop. 0 (or not above fetch_max_wait_ms) keeps the short wait.
    idle_fetch_max_wait_ms: int = Field(default=250, ge=0, le=10_000)
    producer_linger_ms: int = Field(default=0, ge=0, le=1_000)
    # auto: ask the broker (an InitProducerId request) at start-up and turn idempotence
    # on where it answers; Tansu (and aiokafka against it) fails that request.
    producer_idempotence: Literal["auto", "true", "false"] = "auto"
    replication_factor: int = Field(default=1, ge=1, le=7)
    dlq_retention_ms: int = Field(
        default=DLQ_RETENTION_MS, ge=-1, description="DLQ topics' retention.ms; -1 for ever"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # A file holding the password (mode 0600, as `podium up --secure` writes them): kept
    # out of the environment, which child processes and /proc/<pid>/environ expose.
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    # mTLS: the client's certificate chain and key, PEM.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # A URL may hold a password: SecretStr keeps it out of reprs and tracebacks, and
    # each has a _FILE variant (a file holding the URL) to keep it out of the environment.
    router_database_url: SecretStr | None = None
    executor_database_url: SecretStr | None = None
    memory_database_url: SecretStr | None = None
    recovery_database_url: SecretStr | None = None
    api_database_url: SecretStr | None = None
    router_database_url_file: Path | None = None
    executor_database_url_file: Path | None = None
    memory_database_url_file: Path | None = None
    recovery_database_url_file: Path | None = None
    api_database_url_file: Path | None = None
    # Replicas of a role on SQLite files of their own refuse to process beside each
    # other (podium_shared.shared_state); true makes that a warning, for experts only.
    allow_unshared_sqlite: bool = False

    blob_url: str | None = Field(
        default=None, description="where bodies too large for a record go; default home/blobs"
    )
    workflows: str = Field(default="workflows", description="':'-separated folders of YAML")
    pool: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    max_batch: int = Field(default=500, ge=1, le=10_000)
    # Where replicas share a database, each relay claims the outbox rows it sends; a
    # killed replica's claims lapse after this and a surviving replica sends its rows.
    outbox_lease_s: float = Field(
        default=10.0, gt=0, description="a relay's claim on outbox rows expires after this"
    )
    log_level: str = "INFO"
    # The event loop every service runs on: asyncio's own, or uvloop's (libuv). Opt-in
    # until a measurement says it pays (docs/benchmarks.md, "What limits podium").
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    # Tenants bound to topics of their own (comma-separated): the router reads each one's
    # <prefix>.tenant.<name>.tasks.v1 and answers on its own task-events topic; with
    # Kafka ACLs only that tenant's principal may use them (docs/security.md, Tenants).
    tenants: str = Field(default="", description="comma-separated tenants bound to own topics")

    @model_validator(mode="after")
    def _broker_defaults(self) -> Settings:
        if self.broker is None:
            self.broker = "kafka" if self.kafka_bootstrap else "tansu"
        if self.fetch_max_wait_ms == -1:
            self.fetch_max_wait_ms = 5 if self.broker == "tansu" else 500
        if self.sasl_password_file is not None:
            if self.sasl_password is not None:
                raise ValueError("set PODIUM_SASL_PASSWORD or PODIUM_SASL_PASSWORD_FILE, not both")
            # Read once, at start-up: a missing file is a configuration error now, not a
            # failed connection later.
            self.sasl_password = read_secret_file(self.sasl_password_file)
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"PODIUM_SASL_MECHANISM={self.sasl_mechanism} needs PODIUM_SASL_USERNAME and "
                "a password (PODIUM_SASL_PASSWORD_FILE or PODIUM_SASL_PASSWORD)"
            )
        fill_from_files(
            self,
            [
                (
                    f"{role}_database_url",
                    f"{role}_database_url_file",
                    f"PODIUM_{role.upper()}_DATABASE_URL",
                )
                for role in ROLES
            ],
        )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("PODIUM_SSL_CERTFILE and PODIUM_SSL_KEYFILE go together")
        return self

    @field_validator("event_loop", mode="before")
    @classmethod
    def _event_loop_name(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, v: str) -> str:
        names = [t.strip() for t in v.split(",") if t.strip()]
        for name in names:
            # A tenant's name is part of topic, group and user names.
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,99}", name):
                raise ValueError(f"tenant {name!r}: lower-case letters, digits, '_' and '-' only")
        return ",".join(dict.fromkeys(names))

    @property
    def tenant_names(self) -> tuple[str, ...]:
        """The tenants bound to topics of their own (``tenants``), in order."""
        return tuple(t for t in self.tenants.split(",") if t)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    def database_url(self, service: ServiceName) -> str:
        """The service's own database: its setting, else SQLite under ``home``."""
        url = self.configured_database_url(service)
        if url:
            return url
        suffix = f"-{self.pool}" if service == "executor" else ""
        return f"sqlite:///{self.home / f'{service}{suffix}.db'}"

    def configured_database_url(self, service: str) -> str | None:
        """The service's database URL as set (PODIUM_<SERVICE>_DATABASE_URL[_FILE]), or None."""
        return reveal(getattr(self, f"{service}_database_url"))

    def require_bootstrap(self) -> str:
        if not self.kafka_bootstrap:
            raise RuntimeError(
                "PODIUM_KAFKA_BOOTSTRAP is not set: start the stack with `podium up` "
                "or point it at a Kafka cluster"
            )
        return self.kafka_bootstrap

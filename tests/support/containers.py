"""Apache Kafka in Docker, for test sessions on a machine whose Docker engine answers.

testcontainers' ``KafkaContainer`` (``testcontainers.community.kafka``: the old
``testcontainers.kafka`` import is deprecated since 4.15, and ``filterwarnings = ["error"]``
turned that warning into an error in every integration test) is written for Confluent's
``cp-kafka`` image: its KRaft check wants a Confluent version (>= 7.0.0, so ``4.4.0`` is
refused) and its start script sources ``/etc/confluent/docker/*``. The reference broker is
Apache Kafka 4.4, so this subclass keeps what the library does well (listeners, KRaft
settings, the start-script handshake that learns the mapped port before the broker
advertises it, the log wait, the bootstrap address) and swaps only the Confluent parts for
the ``apache/kafka`` image's own launcher."""

from __future__ import annotations

from typing import Any

from testcontainers.community.kafka import KafkaContainer
from testcontainers.core.version import ComparableVersion

KAFKA_IMAGE = "apache/kafka:4.4.0"  # the reference broker (ARCHITECTURE.md, "Brokers")
APACHE_LAUNCHER = "/etc/kafka/docker/run"  # formats the storage from CLUSTER_ID, then starts
FIRST_APACHE_IMAGE = "3.7.0"  # apache/kafka images exist from 3.7, all of them KRaft


def start_script(host: str, port: int, launcher: str = APACHE_LAUNCHER) -> str:
    """The script the container waits for: advertise the address the host reaches, start."""
    listeners = f"PLAINTEXT://{host}:{port},BROKER://$(hostname -i | cut -d' ' -f1):9092"
    return f"#!/bin/sh\nexport KAFKA_ADVERTISED_LISTENERS={listeners}\nexec {launcher}\n"


class ApacheKafkaContainer(KafkaContainer):
    """One Apache Kafka node in KRaft combined mode (broker and controller)."""

    def __init__(self, image: str = KAFKA_IMAGE, **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        self.with_kraft()

    def _verify_min_kraft_version(self) -> None:
        tag = self.image.rsplit(":", 1)[-1]
        if ComparableVersion(tag) < FIRST_APACHE_IMAGE:
            raise ValueError(f"apache/kafka {tag} predates the images ({FIRST_APACHE_IMAGE}+)")

    def _configure_kraft(self) -> None:
        super()._configure_kraft()
        # The parent's boot command edits Confluent's scripts, absent here; the apache
        # launcher formats the log directory from CLUSTER_ID on its own.
        self.boot_command = ""

    def tc_start(self) -> None:
        host = self.get_container_host_ip()
        port = int(self.get_exposed_port(self.port))
        self.create_file(start_script(host, port).encode(), self.TC_START_SCRIPT)

"""The Docker path of the `kafka_bootstrap` fixture, checked without a Docker engine:
the import raises no deprecation (warnings are errors in tests) and the container is
configured as Apache Kafka 4.4 in KRaft mode, started by the apache image's launcher."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testcontainers.community.kafka import KafkaContainer

from tests.support.containers import KAFKA_IMAGE, ApacheKafkaContainer, start_script

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# No engine is asked: an explicit API version keeps the docker SDK from probing one.
NO_ENGINE: dict[str, Any] = {"docker_client_kw": {"version": "1.44"}}
# What Apache Kafka 4.x logs once the node serves (KafkaRaftServer).
STARTED = "[2026-11-30 10:00:00,000] INFO [KafkaRaftServer nodeId=1] Kafka Server started"


def python_with_warnings_as_errors(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_fixture_import_raises_no_deprecation_warning() -> None:
    done = python_with_warnings_as_errors(
        "import sys, tests.support.containers; "
        "assert 'testcontainers.kafka' not in sys.modules, 'deprecated module imported'"
    )
    assert done.returncode == 0, done.stderr


def test_the_old_import_is_the_one_that_fails() -> None:
    done = python_with_warnings_as_errors("import testcontainers.kafka")
    assert done.returncode != 0
    assert "DeprecationWarning: testcontainers.kafka is deprecated" in done.stderr


def test_the_image_is_the_reference_broker() -> None:
    assert KAFKA_IMAGE == "apache/kafka:4.4.0"
    assert ApacheKafkaContainer(**NO_ENGINE).image.endswith(KAFKA_IMAGE)


def test_the_library_container_alone_refuses_an_apache_version() -> None:
    # Why the subclass exists: the stock KRaft check compares with Confluent's versions.
    with pytest.raises(ValueError, match="not supported in Kraft mode"):
        KafkaContainer(KAFKA_IMAGE, **NO_ENGINE).with_kraft()


def test_kraft_configuration_without_confluent_scripts() -> None:
    kafka = ApacheKafkaContainer(**NO_ENGINE)
    kafka.configure()  # type: ignore[no-untyped-call]
    env = kafka.env
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_NODE_ID"]) == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9094"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CONTROLLER://0.0.0.0:9094" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].endswith("CONTROLLER:PLAINTEXT")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # 16 bytes, base64
    assert kafka.boot_command == ""  # nothing that edits /etc/confluent
    assert kafka.wait_for.match(STARTED)
    assert "9093" in kafka.ports  # the host listener, mapped to a free port


def test_the_start_script_advertises_the_mapped_address_and_runs_the_apache_launcher() -> None:
    script = start_script("localhost", 49153)
    assert "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://localhost:49153,BROKER://" in script
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")
    assert "confluent" not in script

"""Security settings, the throwaway CA and the secure broker's configuration: no broker."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from podium.stack import secure_local
from podium_shared import Settings
from podium_shared.acls import Operation, Pattern, Resource, acls, principal
from podium_shared.kafka import ssl_context, tls_refusal
from podium_shared.kafka_broker import PRINCIPAL_MAPPING_RULES, KafkaBroker
from podium_shared.tls import LocalCA

pytestmark = pytest.mark.unit


def test_the_password_is_read_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "router.password"
    secret.write_text("s3cret\n")
    s = Settings(sasl_mechanism="SCRAM-SHA-512", sasl_username="router", sasl_password_file=secret)
    assert s.sasl_password is not None
    assert s.sasl_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_a_password_in_both_places_or_none_at_all_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "p"
    secret.write_text("x")
    with pytest.raises(ValidationError, match="not both"):
        Settings(sasl_password_file=secret, sasl_password="y")
    with pytest.raises(ValidationError, match="needs PODIUM_SASL_USERNAME"):
        Settings(sasl_mechanism="SCRAM-SHA-512", sasl_username="router")
    with pytest.raises(ValidationError, match="go together"):
        Settings(ssl_certfile=secret)


def test_issued_keys_are_private_and_the_chain_verifies(tmp_path: Path) -> None:
    ca = LocalCA.ensure(tmp_path / "tls")
    server = ca.issue("broker", server=True)
    client = ca.issue("router", server=False)
    for key in (ca.key, server.key, client.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert LocalCA.ensure(tmp_path / "tls").cert.read_bytes() == ca.cert.read_bytes()

    # A TLS handshake on loopback: our client context (CA + client certificate)
    # against a server with the broker's chain that requires a client certificate.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert))
    server_ctx.load_cert_chain(str(server.cert), str(server.key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl_context(
        Settings(ssl_cafile=ca.cert, ssl_certfile=client.cert, ssl_keyfile=client.key)
    )
    listener = socket.create_server(("127.0.0.1", 0))
    peer: list[object] = []

    def accept() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            peer.append(tls.getpeercert())

    thread = threading.Thread(target=accept)
    thread.start()
    with (
        socket.create_connection(listener.getsockname()) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    thread.join(10)
    listener.close()
    assert peer and "router" in str(peer[0])


def test_the_secure_broker_speaks_only_sasl_ssl_to_clients(tmp_path: Path) -> None:
    security = secure_local(tmp_path, ("default", "gpu"))
    assert set(security.users) == {
        "broker",
        "operator",
        "router",
        "memory",
        "recovery",
        "api",
        "executor-default",
        "executor-gpu",
    }
    assert principal("executor", "gpu") == "executor-gpu"
    assert principal(None, None) == "operator"
    # Passwords are kept: a restart over the same metadata log must present the same.
    assert secure_local(tmp_path, ("default", "gpu")).users == security.users
    broker = KafkaBroker(tmp_path / "kafka", security=security)
    broker._layout()
    props = broker._properties(broker.members[0])
    assert f"listeners=SASL_SSL://127.0.0.1:{broker.members[0].port}," in props
    assert f"advertised.listeners=SASL_SSL://127.0.0.1:{broker.members[0].port}\n" in props
    assert "PLAINTEXT://" not in props.replace("CONTROLLER:PLAINTEXT", "")
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in props
    assert security.users["router"] not in repr(security)


def test_acls_follow_the_channels_and_nothing_more() -> None:
    entries = acls("podium", ("default", "gpu"))

    def allowed(user: str, op: Operation, resource: Resource, name: str) -> bool:
        return any(
            a.principal == user
            and a.operation in (op, Operation.ALL)
            and a.resource is resource
            and (name == a.name if a.pattern is Pattern.LITERAL else name.startswith(a.name))
            for a in entries
        )

    T = Resource.TOPIC
    assert allowed("router", Operation.READ, T, "podium.tasks.v1")
    assert allowed("router", Operation.WRITE, T, "podium.steps.gpu.v1")
    assert allowed("executor-gpu", Operation.READ, T, "podium.steps.gpu.v1")
    assert allowed("executor-gpu", Operation.WRITE, T, "podium.steps.gpu.v1.dlq")
    assert allowed("executor-gpu", Operation.WRITE, T, "podium.step-results.v1")
    assert allowed("executor-gpu", Operation.READ, Resource.GROUP, "podium-executor-gpu")
    assert allowed("executor-gpu", Operation.IDEMPOTENT_WRITE, Resource.CLUSTER, "kafka-cluster")
    # What it must not do: submit tasks, read another pool's or memory's steps, write steps.
    assert not allowed("executor-gpu", Operation.WRITE, T, "podium.tasks.v1")
    assert not allowed("executor-gpu", Operation.READ, T, "podium.steps.default.v1")
    assert not allowed("executor-gpu", Operation.READ, T, "podium.steps.memory.v1")
    assert not allowed("executor-gpu", Operation.READ, T, "podium.task-events.v1")
    assert not allowed("executor-gpu", Operation.WRITE, T, "podium.steps.gpu.v1")
    assert not allowed("executor-gpu", Operation.READ, Resource.GROUP, "podium-router")
    assert not allowed("memory", Operation.WRITE, T, "podium.task-events.v1")
    assert allowed("memory", Operation.READ, T, "podium.task-events.v1")
    # Services never create topics at the cluster level; the operator does.
    assert not any(
        a.resource is Resource.CLUSTER and a.operation is Operation.CREATE
        for a in entries
        if a.principal != "operator"
    )
    assert all(a.name.startswith("podium") or a.resource is Resource.CLUSTER for a in entries)


def test_the_mtls_broker_requires_client_certificates_named_by_their_cn(tmp_path: Path) -> None:
    security = secure_local(tmp_path, ("default",), auth="mtls")
    assert security.users == {}  # no passwords made or kept
    assert not (tmp_path / "secrets").exists()
    assert set(security.clients) == {
        "operator",
        "router",
        "memory",
        "recovery",
        "api",
        "executor-default",
    }
    for name, issued in security.clients.items():
        assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    broker = KafkaBroker(tmp_path / "kafka", security=security)
    broker._layout()
    props = broker._properties(broker.members[0])
    port = broker.members[0].port
    assert f"listeners=SSL://127.0.0.1:{port}," in props
    assert f"advertised.listeners=SSL://127.0.0.1:{port}\n" in props
    assert "listener.security.protocol.map=SSL:SSL,CONTROLLER:SSL\n" in props
    assert "inter.broker.listener.name=SSL\n" in props
    assert "ssl.client.auth=required\n" in props
    assert f"ssl.principal.mapping.rules={PRINCIPAL_MAPPING_RULES}\n" in props
    assert "super.users=User:broker\n" in props
    assert "sasl" not in props.lower()
    options = security.client_options("router")
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options


def test_the_mapping_rule_takes_the_cn_and_nothing_else() -> None:
    # Kafka applies the rule's regex to the whole RFC 2253 DN (SslPrincipalMapper).
    rule, default = PRINCIPAL_MAPPING_RULES.rsplit(",", 1)
    assert default == "DEFAULT"
    pattern, replacement, flags = rule.removeprefix("RULE:").split("/")
    assert (replacement, flags) == ("$1", "")
    assert re.fullmatch(pattern, "CN=executor-gpu")
    assert re.sub(pattern, r"\1", "CN=executor-gpu") == "executor-gpu"
    assert not re.fullmatch(pattern, "CN=router,O=elsewhere")  # falls to DEFAULT: no ACLs


def test_a_tls_alert_is_the_brokers_refusal_of_our_certificate() -> None:
    alert = ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_UNKNOWN] sslv3 alert (_ssl.c:2580)")
    assert "refused our client certificate" in str(tls_refusal("127.0.0.1:9093", alert))
    ours = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    message = str(tls_refusal("127.0.0.1:9093", ours))
    assert "CERTIFICATE_VERIFY_FAILED" in message and "PODIUM_SSL_CAFILE" in message


def test_the_api_principal_reads_events_and_dead_letters_and_submits() -> None:
    entries = [a for a in acls("podium", ("default", "gpu")) if a.principal == "api"]

    def allowed(op: Operation, resource: Resource, name: str) -> bool:
        return any(
            a.operation is op
            and a.resource is resource
            and (name == a.name if a.pattern is Pattern.LITERAL else name.startswith(a.name))
            for a in entries
        )

    T = Resource.TOPIC
    assert allowed(Operation.WRITE, T, "podium.tasks.v1")
    assert allowed(Operation.READ, T, "podium.task-events.v1")
    assert allowed(Operation.READ, Resource.GROUP, "podium-api-1f2e")  # a group per database
    for dlq in ("podium.steps.gpu.v1.dlq", "podium.steps.memory.v1.dlq", "podium.tasks.v1.dlq"):
        assert allowed(Operation.READ, T, dlq)
    assert allowed(Operation.READ, T, "podium.step-results.v1")  # its projection
    # It reads no step requests and writes no DLQ (the services dead-letter, not the
    # API); it writes each DLQ's source topic (replay through the API) and no other.
    assert not allowed(Operation.READ, T, "podium.steps.gpu.v1")
    assert not allowed(Operation.WRITE, T, "podium.tasks.v1.dlq")
    for source in ("podium.steps.gpu.v1", "podium.steps.memory.v1", "podium.task-events.v1"):
        assert allowed(Operation.WRITE, T, source)
    assert not allowed(Operation.WRITE, T, "podium.steps.cpu.v1")
    assert not any(a.operation is Operation.ALL for a in entries)

"""Apache Kafka, the reference broker, started without Docker.

The broker's jars are resolved by Maven from Maven Central (``infra/kafka/pom.xml``,
checksums verified) into ``.tools/kafka/<version>/libs`` the first time they are needed,
then each node runs as ``java -cp libs/* kafka.Kafka server.properties``: a combined
broker+controller in KRaft mode on loopback, its data under a directory of the
caller's (``PODIUM_HOME/kafka`` for ``podium up``), so a restart keeps topics,
offsets and records. One node is formatted as a ``--standalone`` controller; a
cluster of three uses a static voter set.

Why not the distribution's shell scripts: they come only in the release tarball,
which is not on a registry this project may use; they are thin wrappers around the
two main classes called here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from podium_shared.aio import run_sync
from podium_shared.embedded import die_with_parent, free_port
from podium_shared.secrets import UMASK, open_private
from podium_shared.tls import Issued, write_secret

KAFKA_VERSION = "4.4.0"
# The repository root: infra/kafka/pom.xml and the .tools/ cache live there.
_REPO = Path(__file__).resolve().parents[3]
POM = _REPO / "infra" / "kafka" / "pom.xml"
# Small, but not so small that the group coordinator and the log cleaner thrash:
# measured here, 384 MiB kept GC pauses under 10 ms with podium's test traffic.
DEFAULT_HEAP_MB = 384

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
# Start, stop, elections and controlled shutdown: what an operator reads after a drill.
logger.server.name = kafka.server
logger.server.level = INFO
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
"""


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot be run here (no Java 17, or its jars cannot be fetched)."""


def kafka_home() -> Path:
    """Where the broker's jars are cached: ``PODIUM_KAFKA_LIBS`` or the repo's .tools/."""
    override = os.environ.get("PODIUM_KAFKA_LIBS")
    return Path(override) if override else _REPO / ".tools" / "kafka" / KAFKA_VERSION / "libs"


def java_version(java: str) -> int:
    """The major version of ``java`` (``java -version`` writes it on stderr)."""
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=30, check=False
    ).stderr
    # 'openjdk version "17.0.15" 2025-04-15' or 'java version "1.8.0_392"'
    quoted = out.split('"')[1] if '"' in out else "0"
    parts = quoted.split(".")
    return int(parts[1] if parts[0] == "1" else parts[0])


def find_java() -> str:
    """The ``java`` to run Kafka with, checked to be 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaUnavailable("Apache Kafka needs Java 17 or newer, and no `java` was found")
    version = java_version(java)
    if version < 17:
        raise KafkaUnavailable(f"Apache Kafka {KAFKA_VERSION} needs Java 17+; {java} is {version}")
    return java


def ensure_kafka_libs(progress: bool = True) -> Path:
    """The broker's classpath folder, fetched by Maven on first use (a progress line
    on stderr says so); later calls return at once."""
    libs = kafka_home()
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaUnavailable(f"Apache Kafka's jars are not in {libs} and Maven is not installed")
    if progress:
        print(
            f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {libs} "
            "(first run only)…",
            file=sys.stderr,
            flush=True,
        )
    if libs.exists():
        shutil.rmtree(libs)  # a fetch that died half-way: start over
    result = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-C",  # fail on a checksum mismatch, never warn and go on
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise KafkaUnavailable(
            f"could not fetch Apache Kafka {KAFKA_VERSION} with Maven:\n"
            + (result.stdout + result.stderr)[-3000:]
        )
    done.write_text(KAFKA_VERSION)
    return libs


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


SCRAM_MECHANISM = "SCRAM-SHA-512"
# mTLS: a client's principal is its certificate's CN ("CN=router" -> User:router), so the
# ACLs written for the SCRAM users apply unchanged. Kafka's rule syntax (SslPrincipalMapper):
# RULE:<regex>/<replacement>/, rules tried in order; DEFAULT keeps the whole DN, which no
# ACL names, so a certificate without a CN gets nothing.
PRINCIPAL_MAPPING_RULES = "RULE:^CN=([^,]+)$/$1/,DEFAULT"

Auth = Literal["scram", "mtls"]


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secure local Kafka needs: its certificate (``server``, chain and key),
    the CA clients trust (``cafile``), and how clients prove who they are (``auth``):

    - ``scram``: the SCRAM users made at format time (name -> password) over SASL_SSL.
      ``inter_broker_user`` is one of them: brokers talk to each other over the same
      listener, as that principal.
    - ``mtls``: a certificate per client from the same CA (``clients``: name -> chain and
      key) over SSL with client authentication required; brokers present their own."""

    server: Issued
    cafile: Path
    users: dict[str, str] = field(default_factory=dict, repr=False)  # never in a repr or log
    inter_broker_user: str = "broker"
    server_name: str = "broker"  # the CN of the brokers' certificate
    auth: Auth = "scram"
    clients: dict[str, Issued] = field(default_factory=dict)

    @property
    def listener(self) -> str:
        """The clients' (and brokers') listener name, also its security protocol."""
        return "SSL" if self.auth == "mtls" else "SASL_SSL"

    def client_options(self, user: str | None = None) -> dict[str, object]:
        """aiokafka options for ``user`` (default the brokers' own principal) on this
        broker."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.cafile))
        if self.auth == "mtls":
            issued = self.clients[user] if user else self.server
            context.load_cert_chain(str(issued.cert), str(issued.key))
            return {"security_protocol": "SSL", "ssl_context": context}
        name = user or self.inter_broker_user
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": name,
            "sasl_plain_password": self.users[name],
            "ssl_context": context,
        }


async def _cluster_size(bootstrap: str, options: dict[str, object] | None = None) -> int:
    """How many brokers the cluster's metadata lists (0 while none answers)."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not all(_listening(a) for a in bootstrap.split(",")):
        return 0
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=3000, **(options or {})
    )
    try:
        await admin.start()
        described = await admin.describe_cluster()
        return len(described.get("brokers", []))
    except Exception:  # "not answering yet", in any of its forms
        return 0
    finally:
        await admin.close()


@dataclass
class KafkaNode:
    """One combined broker+controller process of a KRaft cluster on loopback."""

    node_id: int
    data_dir: Path
    port: int
    controller_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class KafkaBroker:
    """A local Apache Kafka cluster of ``nodes`` combined KRaft nodes (1 or 3) on
    127.0.0.1, with data under ``data_dir``. Ports are kept in ``data_dir/ports.json``
    so a restart over the same data answers on the same addresses.

    The interface is the embedded broker's (``start``, ``stop``, ``bootstrap``, a
    context manager), plus what the drills need: ``kill``/``restart`` of one node."""

    data_dir: Path
    nodes: int = 1
    heap_mb: int = DEFAULT_HEAP_MB
    progress: bool = True
    log_dir: Path | None = None  # node logs: broker.log (broker-N.log); default data_dir
    # None: one PLAINTEXT listener. Else clients (and brokers) speak SASL_SSL with SCRAM,
    # or SSL with client certificates (mTLS).
    security: BrokerSecurity | None = None
    members: list[KafkaNode] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.members)

    @property
    def replication_factor(self) -> int:
        return min(self.nodes, 3)

    def _layout(self) -> None:
        """Load the node ports of an earlier run, or pick free ones and keep them."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_file = self.data_dir / "ports.json"
        saved: list[list[int]] = []
        if ports_file.exists():
            saved = json.loads(ports_file.read_text())
        if len(saved) != self.nodes:
            saved = [[free_port(), free_port()] for _ in range(self.nodes)]
            ports_file.write_text(json.dumps(saved))
        log_dir = self.log_dir or self.data_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.members = [
            KafkaNode(
                i + 1,
                self.data_dir / f"node-{i + 1}",
                port,
                cport,
                log_dir / ("broker.log" if self.nodes == 1 else f"broker-{i + 1}.log"),
            )
            for i, (port, cport) in enumerate(saved)
        ]

    def _properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)
        quorum = (
            f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}"
            if self.nodes == 1
            else f"controller.quorum.voters={voters}"
        )
        rf = self.replication_factor
        min_isr = 2 if rf >= 3 else 1
        listener = self.security.listener if self.security else "PLAINTEXT"
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                quorum,
                f"listeners={listener}://127.0.0.1:{node.port},"
                f"CONTROLLER://127.0.0.1:{node.controller_port}",
                f"advertised.listeners={listener}://127.0.0.1:{node.port}",
                "controller.listener.names=CONTROLLER",
                f"inter.broker.listener.name={listener}",
                # With security on, the quorum speaks mTLS (the brokers' certificate);
                # KRaft controllers cannot use SCRAM, whose credentials live in the very
                # metadata they serve. Either way it is on loopback and not advertised.
                f"listener.security.protocol.map={listener}:{listener},"
                f"CONTROLLER:{'SSL' if self.security else 'PLAINTEXT'}",
                *self._security_properties(),
                f"log.dirs={node.data_dir / 'data'}",
                # podium creates its own topics with the partitions it wants.
                "auto.create.topics.enable=false",
                f"default.replication.factor={rf}",
                f"min.insync.replicas={min_isr}",
                f"offsets.topic.replication.factor={rf}",
                f"transaction.state.log.replication.factor={rf}",
                f"transaction.state.log.min.isr={min_isr}",
                f"share.coordinator.state.topic.replication.factor={rf}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                # The first join of a group otherwise waits 3 s for more members.
                "group.initial.rebalance.delay.ms=0",
                # Fewer, smaller internal partitions: this is a 2-core development box.
                "offsets.topic.num.partitions=10",
                "num.network.threads=2",
                "num.io.threads=4",
                "log.segment.bytes=67108864",
                "",
            ]
        )

    def _security_properties(self) -> list[str]:
        """The secure listener's settings: a PEM keystore (the broker's key and chain in
        one file), a PEM truststore of the local CA, and either SCRAM-SHA-512 only or
        client certificates required, mapped to principals by their CN."""
        sec = self.security
        if sec is None:
            return []
        common = [
            # Nothing is allowed that an ACL (podium_shared.acls) does not allow.
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.data_dir / 'broker-keystore.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={sec.cafile}",
            "ssl.endpoint.identification.algorithm=https",
            "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
        ]
        if sec.auth == "mtls":
            return [
                *common,
                # Every listener, the quorum's too: a client without a certificate of the
                # local CA does not get past the handshake.
                "ssl.client.auth=required",
                # The brokers' certificate (CN=broker) maps to User:broker on both listeners.
                f"ssl.principal.mapping.rules={PRINCIPAL_MAPPING_RULES}",
                f"super.users=User:{sec.inter_broker_user}",
            ]
        password = sec.users[sec.inter_broker_user]
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{sec.inter_broker_user}" password="{password}";'
        )
        return [
            *common,
            # The brokers: as SCRAM users between brokers, by certificate on the quorum.
            f"super.users=User:{sec.inter_broker_user};User:CN={sec.server_name}",
            "listener.name.controller.ssl.client.auth=required",
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config={jaas}",
        ]

    def _format(self, java: str, libs: Path) -> None:
        """Format each node's storage once (a restart over existing data skips it)."""
        unformatted = [
            n for n in self.members if not (n.data_dir / "data" / "meta.properties").exists()
        ]
        if not unformatted:
            return
        cluster_id_file = self.data_dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        cluster_id = cluster_id_file.read_text().strip()
        for node in unformatted:
            cmd = [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format"]
            # "--cluster-id=": an id may begin with "-", which argparse reads as an option.
            cmd += [f"--cluster-id={cluster_id}", "-c", str(node.data_dir / "server.properties")]
            if self.nodes == 1:
                cmd.append("--standalone")
            # SCRAM credentials live in the metadata log; adding them at format time
            # means the brokers can authenticate each other from their first start.
            for name, password in (self.security.users if self.security else {}).items():
                cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            if result.returncode != 0:
                raise RuntimeError(
                    f"formatting Kafka node {node.node_id} failed:\n{result.stdout}{result.stderr}"
                )

    def _write_configs(self) -> None:
        if self.security:
            # Kafka's PEM keystore file holds the private key and the certificate chain.
            keystore = (
                self.security.server.key.read_bytes() + self.security.server.cert.read_bytes()
            )
            write_secret(self.data_dir / "broker-keystore.pem", keystore)
        for node in self.members:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            # 0600: with security on, it holds the inter-broker password.
            write_secret(node.data_dir / "server.properties", self._properties(node).encode())
            (node.data_dir / "log4j2.properties").write_text(_LOG4J2)

    def start(self, timeout_s: float = 90.0) -> KafkaBroker:
        java = find_java()
        libs = ensure_kafka_libs(self.progress)
        self._layout()
        self._write_configs()
        self._format(java, libs)
        try:
            for node in self.members:
                self.start_node(node, java=java, libs=libs)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(
        self, node: KafkaNode, *, java: str | None = None, libs: Path | None = None
    ) -> None:
        """Start one node's JVM (its storage already formatted)."""
        java = java or find_java()
        libs = libs or ensure_kafka_libs(self.progress)
        out = open_private(node.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KAFKA_"))}
        node.proc = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap_mb}m",
                f"-Xms{self.heap_mb}m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.properties'}",
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(node.data_dir / "server.properties"),
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            umask=UMASK,  # its data and logs: private, as the rest of PODIUM_HOME
            start_new_session=True,  # Ctrl-C reaches our parent, which stops us in order
            preexec_fn=die_with_parent,
        )
        out.close()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until every node is registered and the cluster answers metadata."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.members:
                if node.proc is not None and node.proc.poll() is not None:
                    tail = node.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(
                        f"Kafka node {node.node_id} exited with {node.proc.returncode}:\n{tail}"
                    )
            options = self.security.client_options() if self.security else None
            if run_sync(_cluster_size(self.bootstrap, options)) == len(self.members):
                return
            time.sleep(0.2)
        raise TimeoutError(f"Apache Kafka did not answer on {self.bootstrap} in {timeout_s}s")

    def kill(self, node: KafkaNode, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one node and wait for it to exit (a drill's fault)."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(60)

    def restart(self, node: KafkaNode, timeout_s: float = 90.0) -> None:
        """Start a killed node again over its data, and wait for the cluster."""
        self.start_node(node)
        self.wait_ready(timeout_s)

    def stop(self, grace_s: float = 30.0) -> None:
        """Controlled shutdown of every node (SIGTERM), then SIGKILL after ``grace_s``."""
        for node in self.members:
            if node.alive():
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.members:
            if node.proc is None:
                continue
            try:
                node.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            node.proc = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """``python -m podium_shared.kafka_broker check``: fetch the jars if needed and say
    whether Apache Kafka can run here (exit 1 with the reason when it cannot)."""
    if argv[1:] != ["check"]:
        print("usage: python -m podium_shared.kafka_broker check", file=sys.stderr)
        return 2
    try:
        find_java()
        libs = ensure_kafka_libs()
    except KafkaUnavailable as exc:
        print(exc)
        return 1
    print(f"Apache Kafka {KAFKA_VERSION} ready to run from {libs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

"""docker-compose.yml and services/Dockerfile, checked without a Docker engine.

The checks are functions that return the problems they find, so the tests below
can also show that each check fails on a broken copy of the file."""

from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from podium_shared import Settings
from podium_shared.telemetry import TelemetrySettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
# One Dockerfile for the four services, told which by the build argument SERVICE.
DOCKERFILE = "services/Dockerfile"
SERVICES = ("router", "executor", "memory", "recovery")
KAFKA = "kafka"

# The Compose Specification's keys for what this file uses (compose-spec.json);
# a misspelt key is otherwise ignored by nothing but the engine.
TOP_LEVEL_KEYS = {
    "version",
    "name",
    "include",
    "services",
    "models",
    "networks",
    "volumes",
    "secrets",
    "configs",
}
SERVICE_KEYS = {
    "develop",
    "deploy",
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "label_file",
    "environment",
    "expose",
    "extends",
    "provider",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "models",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "secrets",
    "sysctls",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "uts",
    "userns_mode",
    "volumes",
    "volumes_from",
    "working_dir",
}
BUILD_KEYS = {
    "context",
    "dockerfile",
    "dockerfile_inline",
    "entitlements",
    "args",
    "ssh",
    "labels",
    "cache_from",
    "cache_to",
    "no_cache",
    "additional_contexts",
    "network",
    "pull",
    "target",
    "shm_size",
    "extra_hosts",
    "isolation",
    "privileged",
    "secrets",
    "tags",
    "ulimits",
    "platforms",
}
HEALTHCHECK_KEYS = {
    "disable",
    "interval",
    "retries",
    "test",
    "timeout",
    "start_period",
    "start_interval",
}
DEPENDS_ON_KEYS = {"condition", "restart", "required"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
PINNED_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+$")


# ── helpers ──────────────────────────────────────────────────────────────────


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def interpolate(value: object) -> str:
    """Compose's ${VAR:-default} with VAR unset, as `docker compose config` would."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    text = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)
    return text.replace("$$", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(v) for k, v in env.items()}


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,…' → {NAME: (host, port)}."""
    out = {}
    for item in spec.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Each port mapping as (host_ip, published, target)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        target = int(parts[-1])
        published = int(parts[-2]) if len(parts) >= 2 else target
        out.append((parts[-3] if len(parts) == 3 else "", published, target))
    return out


def mounts(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Each volume as (named volume or None, target)."""
    out: list[tuple[str | None, str]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = volume.get("source") if volume.get("type") == "volume" else None
            out.append((source, volume["target"]))
            continue
        parts = str(volume).split(":")
        if len(parts) == 1:
            out.append((None, parts[0]))  # anonymous volume
        elif parts[0].startswith(("/", ".", "~")):
            out.append((None, parts[1]))  # bind mount
        else:
            out.append((parts[0], parts[1]))
    return out


def settings_classes(service: str) -> list[type[BaseSettings]]:
    """The shared Settings and TelemetrySettings, and the service's own
    (``podium_<service>.settings``) if any."""
    classes: list[type[BaseSettings]] = [Settings, TelemetrySettings]
    name = f"podium_{service}.settings"
    if importlib.util.find_spec(name) is not None:
        module = importlib.import_module(name)
        classes += [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, BaseSettings) and c.__module__ == name
        ]
    return classes


def settings_problems(where: str, service: str, env: dict[str, str]) -> list[str]:
    """Every PODIUM_* variable is a field of a settings class, with a valid value."""
    claimed: set[str] = set()
    problems = []
    for cls in settings_classes(service):
        prefix = str(cls.model_config.get("env_prefix", ""))
        values = {
            k.removeprefix(prefix).lower(): v
            for k, v in env.items()
            if k.startswith(prefix) and k.removeprefix(prefix).lower() in cls.model_fields
        }
        claimed |= {prefix + k.upper() for k in values}
        try:
            cls.model_validate(values)
        except ValueError as exc:
            problems.append(f"{where}: invalid settings: {exc}")
    unknown = sorted(k for k in env if k.startswith("PODIUM_") and k not in claimed)
    if unknown:
        problems.append(f"{where}: unknown settings {unknown}")
    return problems


def seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ── compose checks ───────────────────────────────────────────────────────────


def spec_problems(doc: dict[str, Any]) -> list[str]:
    """Keys and enumerations of the Compose Specification."""
    problems = [
        f"unknown top-level key {k!r}"
        for k in doc
        if k not in TOP_LEVEL_KEYS and not k.startswith("x-")
    ]
    services = doc.get("services") or {}
    declared_volumes = set(doc.get("volumes") or {})
    for name, svc in services.items():
        where = f"services.{name}"
        problems += [
            f"{where}: unknown key {k!r}"
            for k in svc
            if k not in SERVICE_KEYS and not k.startswith("x-")
        ]
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: neither image nor build")
        build = svc.get("build")
        if isinstance(build, dict):
            problems += [
                f"{where}.build: unknown key {k!r}"
                for k in build
                if k not in BUILD_KEYS and not k.startswith("x-")
            ]
        check = svc.get("healthcheck")
        if check is not None:
            problems += [
                f"{where}.healthcheck: unknown key {k!r}"
                for k in check
                if k not in HEALTHCHECK_KEYS and not k.startswith("x-")
            ]
            test = check.get("test")
            if isinstance(test, list) and (not test or test[0] not in {"CMD", "CMD-SHELL", "NONE"}):
                problems.append(f"{where}.healthcheck.test must start with CMD, CMD-SHELL or NONE")
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in check:
                    try:
                        seconds(str(check[key]))
                    except AssertionError as exc:
                        problems.append(f"{where}.healthcheck.{key}: {exc}")
        if "restart" in svc and not RESTART.match(str(svc["restart"])):
            problems.append(f"{where}.restart: invalid policy {svc['restart']!r}")
        depends = svc.get("depends_on") or {}
        for dep, cond in (
            depends.items() if isinstance(depends, dict) else ((d, None) for d in depends)
        ):
            if dep not in services:
                problems.append(f"{where}.depends_on: no service {dep!r}")
            if isinstance(cond, dict):
                problems += [
                    f"{where}.depends_on.{dep}: unknown key {k!r}"
                    for k in cond
                    if k not in DEPENDS_ON_KEYS and not k.startswith("x-")
                ]
                if cond.get("condition") not in CONDITIONS:
                    problems.append(
                        f"{where}.depends_on.{dep}: bad condition {cond.get('condition')!r}"
                    )
        for source, _ in mounts(svc):
            if source is not None and source not in declared_volumes:
                problems.append(f"{where}: volume {source!r} is not declared at top level")
    return problems


def kafka_problems(doc: dict[str, Any]) -> list[str]:
    """A coherent single-node KRaft broker (apache/kafka image settings)."""
    kafka = (doc.get("services") or {}).get(KAFKA)
    if kafka is None:
        return [f"no {KAFKA!r} service"]
    problems = []
    image = str(kafka.get("image", ""))
    if not image.startswith("apache/kafka:") or not PINNED_TAG.match(image):
        problems.append(f"kafka: image {image!r} is not apache/kafka pinned to x.y.z")
    env = environment(kafka)
    required = (
        "KAFKA_NODE_ID",
        "KAFKA_PROCESS_ROLES",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "KAFKA_INTER_BROKER_LISTENER_NAME",
    )
    missing = [k for k in required if k not in env]
    if missing:
        return [*problems, f"kafka: missing {', '.join(missing)}"]

    if set(env["KAFKA_PROCESS_ROLES"].split(",")) != {"broker", "controller"}:
        problems.append("kafka: a single node must be broker,controller")
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controllers = set(env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(","))
    if not set(advertised) <= set(bound):
        problems.append(
            f"kafka: advertised listeners {sorted(set(advertised) - set(bound))} "
            "are not in KAFKA_LISTENERS"
        )
    if controllers & set(advertised):
        problems.append("kafka: the controller listener must not be advertised to clients")
    if not controllers <= set(bound):
        problems.append("kafka: KAFKA_CONTROLLER_LISTENER_NAMES not in KAFKA_LISTENERS")
    if not set(bound) <= set(protocols):
        problems.append("kafka: a listener has no KAFKA_LISTENER_SECURITY_PROTOCOL_MAP entry")
    if env["KAFKA_INTER_BROKER_LISTENER_NAME"] not in set(advertised) - controllers:
        problems.append("kafka: KAFKA_INTER_BROKER_LISTENER_NAME is not an advertised listener")
    controller_ports = {bound[c][1] for c in controllers if c in bound}
    hostnames = {KAFKA, kafka.get("hostname", KAFKA), "localhost"}
    voters = [v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")]
    node_id = env["KAFKA_NODE_ID"]
    if [v[0] for v in voters] != [node_id]:
        problems.append(
            f"kafka: quorum voters {env['KAFKA_CONTROLLER_QUORUM_VOTERS']!r} "
            f"are not just node {node_id}"
        )
    for _, address in voters:
        host, _, port = address.rpartition(":")
        if host not in hostnames or int(port) not in controller_ports:
            problems.append(
                f"kafka: quorum voter {address!r} is not this node's "
                f"controller listener (ports {sorted(controller_ports)})"
            )

    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        if env.get(key) != "1":
            problems.append(f"kafka: {key} must be 1 on a single broker")
    if env.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") != "0":
        problems.append("kafka: KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS should be 0")
    if env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") != "false":
        problems.append("kafka: auto topic creation must be off (podium creates its topics)")

    for _, published, target in published_ports(kafka):
        names = [n for n, (_, p) in bound.items() if p == target and n not in controllers]
        if not names:
            problems.append(f"kafka: published port {target} is no client listener")
        elif advertised.get(names[0]) != ("localhost", published):
            problems.append(
                f"kafka: listener {names[0]} on published port {published} must be "
                f"advertised as localhost:{published}"
            )

    check = kafka.get("healthcheck") or {}
    test = (
        " ".join(check.get("test") or [])
        if isinstance(check.get("test"), list)
        else str(check.get("test", ""))
    )
    match = re.search(r"kafka-broker-api-versions\.sh --bootstrap-server localhost:(\d+)", test)
    if not match:
        problems.append("kafka: healthcheck must run kafka-broker-api-versions.sh")
    elif int(match.group(1)) not in {p for n, (_, p) in bound.items() if n not in controllers}:
        problems.append(f"kafka: healthcheck port {match.group(1)} is no client listener")
    return problems


def podium_problems(doc: dict[str, Any]) -> list[str]:
    """The four services: built from their Dockerfiles, wired to kafka, valid settings."""
    services = doc.get("services") or {}
    kafka = services.get(KAFKA) or {}
    kafka_env = environment(kafka)
    internal = {
        f"{h}:{p}"
        for h, p in listeners(kafka_env.get("KAFKA_ADVERTISED_LISTENERS", "X://x:0")).values()
        if h in {KAFKA, kafka.get("hostname", KAFKA)}
    }
    problems = []
    for name in SERVICES:
        svc = services.get(name)
        where = f"services.{name}"
        if svc is None:
            problems.append(f"no service {name!r}")
            continue
        build = svc.get("build") or {}
        context = REPO / str(build.get("context", "."))
        dockerfile = build.get("dockerfile")
        if dockerfile != DOCKERFILE:
            problems.append(f"{where}: builds from {dockerfile!r}, not {DOCKERFILE}")
        elif not (context / dockerfile).is_file():
            problems.append(f"{where}: {context / dockerfile} does not exist")
        if (build.get("args") or {}).get("SERVICE") != name:
            problems.append(f"{where}: build.args.SERVICE must be {name!r}")
        if context.resolve() != REPO:
            problems.append(f"{where}: the build context must be the repository root")
        depends = svc.get("depends_on") or {}
        if (
            not isinstance(depends, dict)
            or (depends.get(KAFKA) or {}).get("condition") != "service_healthy"
        ):
            problems.append(f"{where}: must depend on kafka with condition service_healthy")
        if not RESTART.match(str(svc.get("restart", ""))) or svc.get("restart") == "no":
            problems.append(f"{where}: needs a restart policy")
        grace = svc.get("stop_grace_period")
        if grace is None or seconds(str(grace)) <= 10:
            problems.append(
                f"{where}: stop_grace_period must be longer than Docker's 10s "
                "(services drain on SIGTERM)"
            )

        env = environment(svc)
        bad = settings_problems(where, name, env)
        if bad:
            problems += bad
            continue
        settings = Settings.model_validate(
            {
                k.removeprefix("PODIUM_").lower(): v
                for k, v in env.items()
                if k.removeprefix("PODIUM_").lower() in Settings.model_fields
            }
        )
        bootstrap = (settings.kafka_bootstrap or "").split(",")
        if not internal or not set(bootstrap) <= internal:
            problems.append(
                f"{where}: PODIUM_KAFKA_BOOTSTRAP {settings.kafka_bootstrap!r} is not "
                f"kafka's in-network advertised listener {sorted(internal)}"
            )
        if settings.producer_idempotence == "false":
            problems.append(f"{where}: PODIUM_PRODUCER_IDEMPOTENCE should be auto or true on Kafka")
        if settings.fetch_max_wait_ms < 100:
            problems.append(f"{where}: PODIUM_FETCH_MAX_WAIT_MS is the Tansu value; use ~500")
        if str(settings.home) not in {target for _, target in mounts(svc)}:
            problems.append(f"{where}: PODIUM_HOME {settings.home} is not on a volume")
        if name == "router" and "PODIUM_WORKFLOWS" not in env:
            problems.append(f"{where}: PODIUM_WORKFLOWS is not set")
        if name == "executor":
            problems += executor_scaling_problems(svc)
    return problems


def executor_scaling_problems(svc: dict[str, Any]) -> list[str]:
    """`docker compose up --scale executor=N` needs nothing unique per container."""
    problems = []
    for key in ("container_name", "hostname", "ports"):
        if svc.get(key):
            problems.append(f"services.executor: {key} prevents --scale")
    named = [source for source, _ in mounts(svc) if source is not None]
    if named:
        problems.append(f"services.executor: named volume {named} would be shared by replicas")
    return problems


COLLECTOR = "otel-collector"
JAEGER = "jaeger"


def collector_problems(doc: dict[str, Any]) -> list[str]:
    """Traces flow service → OTel collector (OTLP/HTTP) → Jaeger (OTLP/gRPC), UI on loopback."""
    services = doc.get("services") or {}
    collector, jaeger = services.get(COLLECTOR), services.get(JAEGER)
    if collector is None or jaeger is None:
        return [f"no {COLLECTOR!r} or {JAEGER!r} service"]
    problems = []
    image = str(collector.get("image", ""))
    if not image.startswith("otel/opentelemetry-collector-contrib:") or not PINNED_TAG.match(image):
        problems.append(f"{COLLECTOR}: image {image!r} is not the contrib collector pinned")
    image = str(jaeger.get("image", ""))
    if not image.startswith(
        ("jaegertracing/jaeger:", "jaegertracing/all-in-one:")
    ) or not PINNED_TAG.match(image):
        problems.append(f"{JAEGER}: image {image!r} is not Jaeger pinned to x.y.z")
    if ("127.0.0.1", 16686, 16686) not in published_ports(jaeger):
        problems.append(f"{JAEGER}: the UI must be published on 127.0.0.1:16686")
    # The collector's config: mounted from infra/, and its Jaeger exporter points at jaeger.
    config: dict[str, Any] = {}
    flags = [str(c) for c in collector.get("command") or []]
    target = next((f.split("=", 1)[1] for f in flags if f.startswith("--config=")), None)
    sources = {
        t: v.split(":")[0] for v in collector.get("volumes") or [] for t in [str(v).split(":")[1]]
    }
    if target is None or target not in sources:
        problems.append(f"{COLLECTOR}: --config is not a mounted file")
    elif not (REPO / sources[target]).is_file():
        problems.append(f"{COLLECTOR}: config {sources[target]} does not exist")
    else:
        config = yaml.safe_load((REPO / sources[target]).read_text())
    http = (((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("http")
    http_port = int(str((http or {}).get("endpoint", ":0")).rsplit(":", 1)[1])
    if not http_port:
        problems.append(f"{COLLECTOR}: no OTLP/HTTP receiver")
    pipeline = ((config.get("service") or {}).get("pipelines") or {}).get("traces") or {}
    exporters = config.get("exporters") or {}
    if not any(
        str((exporters.get(e) or {}).get("endpoint", "")).startswith(f"{JAEGER}:")
        for e in pipeline.get("exporters") or []
    ):
        problems.append(f"{COLLECTOR}: the traces pipeline does not export to {JAEGER}")
    if "otlp" not in (pipeline.get("receivers") or []):
        problems.append(f"{COLLECTOR}: the traces pipeline does not receive OTLP")
    for name in SERVICES:
        svc = services.get(name) or {}
        env = environment(svc)
        if env.get("PODIUM_TRACING") != "otlp":
            problems.append(f"services.{name}: PODIUM_TRACING must be otlp")
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if endpoint != f"http://{COLLECTOR}:{http_port}":
            problems.append(
                f"services.{name}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not "
                f"the collector's OTLP/HTTP receiver"
            )
        if COLLECTOR not in (svc.get("depends_on") or {}):
            problems.append(f"services.{name}: must depend on {COLLECTOR}")
        port = env.get("PODIUM_METRICS_PORT", "0")
        if port == "0" or port not in [str(p) for p in svc.get("expose") or []]:
            problems.append(f"services.{name}: PODIUM_METRICS_PORT {port} is not exposed")
        if env.get("PODIUM_METRICS_HOST") != "0.0.0.0":
            problems.append(f"services.{name}: /metrics must listen on 0.0.0.0 in a container")
    return problems


def compose_problems(doc: dict[str, Any]) -> list[str]:
    return spec_problems(doc) + kafka_problems(doc) + podium_problems(doc) + collector_problems(doc)


# ── Dockerfile checks ────────────────────────────────────────────────────────


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            ins, _, rest = line.strip().partition(" ")
            out.append((ins.upper(), rest.strip()))
    return out


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(c, p) or (p.startswith("**/") and fnmatch.fnmatch(c, p[3:]))
        for p in patterns
        for c in prefixes
    )


def workspace_pyprojects() -> set[str]:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    found = {"pyproject.toml"}
    for pattern in members:
        found |= {str(p.relative_to(REPO)) for p in REPO.glob(f"{pattern}/pyproject.toml")}
    return found


def dockerfile_problems(name: str, text: str) -> list[str]:
    """The problems of the Dockerfile built with ``--build-arg SERVICE=<name>``."""
    where = f"{DOCKERFILE} (SERVICE={name})"
    steps = instructions(text)
    # Global ARG defaults; a stage's bare `ARG NAME` only brings the default into scope.
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    problems = []
    if not any(i == "ARG" and a.split("=")[0] == "SERVICE" for i, a in steps):
        problems.append(f"{where}: no ARG SERVICE")
    elif "SERVICE" in args:
        problems.append(f"{where}: ARG SERVICE has a default; a build must name its service")
    args["SERVICE"] = name

    def expand(s: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)

    project = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())
    package = project["project"]["name"]
    syncs = [expand(a) for i, a in steps if i == "RUN" and "uv sync" in a]
    if not syncs:
        problems.append(f"{where}: no uv sync")
    for run in syncs:
        if f"--package {package}" not in run or "--locked" not in run or "--no-dev" not in run:
            problems.append(f"{where}: `{run}` must be --locked --no-dev --package {package}")

    froms = [expand(a).split()[0] for i, a in steps if i == "FROM"]
    if len(froms) < 2:
        problems.append(f"{where}: not a multi-stage build")
    problems += [
        f"{where}: FROM {f} is not pinned" for f in froms if ":" not in f or f.endswith(":latest")
    ]
    copies = [expand(a).split() for i, a in steps if i == "COPY"]
    uv = [c for c in copies if any(w.startswith("--from=ghcr.io/astral-sh/uv") for w in c)]
    if not uv or not any(
        re.fullmatch(r"--from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", w) for w in uv[0]
    ):
        problems.append(f"{where}: uv must come from ghcr.io/astral-sh/uv:<x.y.z>")
    sources = [
        s
        for c in copies
        if not any(w.startswith("--from") for w in c)
        for s in [w for w in c if not w.startswith("--")][:-1]
    ]
    for source in sources:
        if not (REPO / source).exists():
            problems.append(f"{where}: COPY {source} does not exist")
        elif dockerignored(source):
            problems.append(f"{where}: COPY {source} is excluded by .dockerignore")
    missing = workspace_pyprojects() - set(sources)
    if missing:
        problems.append(
            f"{where}: uv sync --package needs every workspace pyproject.toml; "
            f"missing {sorted(missing)}"
        )

    final_stage = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    users = [a for i, a in final_stage if i == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append(f"{where}: the runtime stage must run as a non-root USER")
    cmd = [a for i, a in steps if i == "CMD"]
    module = f"podium_{name}"
    # CMD cannot expand a build argument: it runs a script the build writes.
    entry = [
        expand(a).replace("%s", name, 1)
        for i, a in steps
        if i == "RUN" and "/app/.venv/bin/podium-service" in a and '"${SERVICE}"' in a
    ]
    if not cmd or json.loads(cmd[-1]) != ["podium-service"]:
        problems.append(f'{where}: CMD must be ["podium-service"]')
    if not any(f"exec python -m {module} " in e for e in entry):
        problems.append(f"{where}: podium-service must exec python -m {module}")
    if not (REPO / "services" / name / "src" / module / "__main__.py").is_file():
        problems.append(f"{where}: {module}.__main__ does not exist")
    env = dict(kv.split("=", 1) for i, a in steps if i == "ENV" for kv in shlex.split(a))
    problems += settings_problems(f"{where}: ENV", name, env)
    for key, value in env.items():
        if key == "PODIUM_WORKFLOWS" and not any(
            c[-1].rstrip("/") == value.rstrip("/") and "workflows/" in c for c in copies
        ):
            problems.append(f"{where}: PODIUM_WORKFLOWS={value} but workflows/ is not copied there")
    return problems


# ── tests ────────────────────────────────────────────────────────────────────


def test_compose_file_is_coherent() -> None:
    assert compose_problems(load_compose()) == []


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_is_coherent(name: str) -> None:
    path = REPO / DOCKERFILE
    assert path.is_file()
    assert dockerfile_problems(name, path.read_text()) == []


def test_router_image_carries_the_workflows_compose_points_at() -> None:
    router = load_compose()["services"]["router"]
    folder = environment(router)["PODIUM_WORKFLOWS"]
    text = (REPO / DOCKERFILE).read_text()
    assert f"COPY workflows/ {folder.rstrip('/')}/" in text
    assert any((REPO / "workflows").glob("*.yaml"))


Mutation = Callable[[dict[str, Any]], None]


def _svc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    svc: dict[str, Any] = doc["services"][name]
    return svc


def _env(doc: dict[str, Any], name: str) -> dict[str, Any]:
    env: dict[str, Any] = _svc(doc, name)["environment"]
    return env


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "executor container_name": (
        lambda d: _svc(d, "executor").update(container_name="podium-executor"),
        "--scale",
    ),
    "executor published port": (
        lambda d: _svc(d, "executor").update(ports=["8000:8000"]),
        "--scale",
    ),
    "executor named volume": (
        lambda d: _svc(d, "executor").update(volumes=["router-data:/data"]),
        "shared by replicas",
    ),
    "depends on kafka merely started": (
        lambda d: _svc(d, "router").update(depends_on={"kafka": {"condition": "service_started"}}),
        "service_healthy",
    ),
    "misspelt condition": (
        lambda d: _svc(d, "memory").update(depends_on={"kafka": {"condition": "service_heathy"}}),
        "bad condition",
    ),
    "misspelt service key": (
        lambda d: _svc(d, "recovery").update(healtcheck={}),
        "unknown key 'healtcheck'",
    ),
    "no kafka healthcheck": (lambda d: _svc(d, "kafka").pop("healthcheck"), "healthcheck"),
    "unpinned kafka": (lambda d: _svc(d, "kafka").update(image="apache/kafka:latest"), "pinned"),
    "voter on the wrong port": (
        lambda d: _env(d, "kafka").update(KAFKA_CONTROLLER_QUORUM_VOTERS="1@kafka:9092"),
        "quorum voter",
    ),
    "voter is another node": (
        lambda d: _env(d, "kafka").update(KAFKA_CONTROLLER_QUORUM_VOTERS="2@kafka:9093"),
        "not just node",
    ),
    "advertised listener not bound": (
        lambda d: _env(d, "kafka").update(
            KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://kafka:9092,EXTERNAL://localhost:29092"
        ),
        "not in KAFKA_LISTENERS",
    ),
    "host listener advertised wrong": (
        lambda d: _env(d, "kafka").update(
            KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://kafka:9092,PLAINTEXT_HOST://kafka:29092"
        ),
        "advertised as localhost",
    ),
    "replication factor 3": (
        lambda d: _env(d, "kafka").update(KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="3"),
        "must be 1",
    ),
    "auto topic creation on": (
        lambda d: _env(d, "kafka").update(KAFKA_AUTO_CREATE_TOPICS_ENABLE="true"),
        "auto topic",
    ),
    "another service's build": (
        lambda d: _svc(d, "memory")["build"].update(args={"SERVICE": "router"}),
        "build.args.SERVICE",
    ),
    "missing Dockerfile": (
        lambda d: _svc(d, "router")["build"].update(dockerfile="services/nope/Dockerfile"),
        "builds from",
    ),
    "bootstrap is the host listener": (
        lambda d: _env(d, "router").update(PODIUM_KAFKA_BOOTSTRAP="localhost:29092"),
        "in-network advertised listener",
    ),
    "misspelt setting": (
        lambda d: _env(d, "executor").update(PODIUM_FETCH_MAX_WAIT="500"),
        "unknown settings",
    ),
    "invalid setting": (
        lambda d: _env(d, "memory").update(PODIUM_FETCH_MAX_WAIT_MS="soon"),
        "invalid settings",
    ),
    "short grace period": (
        lambda d: _svc(d, "recovery").update(stop_grace_period="5s"),
        "stop_grace_period",
    ),
    "service-specific setting misspelt": (
        lambda d: _env(d, "memory").update(PODIUM_MEMORY_RECAL_LIMIT="5"),
        "unknown settings",
    ),
    "tracing not exported": (
        lambda d: _env(d, "router").update(PODIUM_TRACING="local"),
        "must be otlp",
    ),
    "invalid tracing mode": (
        lambda d: _env(d, "memory").update(PODIUM_TRACING="jaeger"),
        "invalid settings",
    ),
    "otlp endpoint to the grpc port": (
        lambda d: _env(d, "executor").update(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://otel-collector:4317"
        ),
        "OTLP/HTTP receiver",
    ),
    "unpinned collector": (
        lambda d: _svc(d, "otel-collector").update(
            image="otel/opentelemetry-collector-contrib:latest"
        ),
        "collector pinned",
    ),
    "jaeger ui on every interface": (
        lambda d: _svc(d, "jaeger").update(ports=["16686:16686"]),
        "127.0.0.1:16686",
    ),
    "collector config missing": (
        lambda d: _svc(d, "otel-collector").update(
            volumes=["./infra/nope.yaml:/etc/otelcol-contrib/config.yaml:ro"]
        ),
        "does not exist",
    ),
    "metrics port not exposed": (
        lambda d: _env(d, "recovery").update(PODIUM_METRICS_PORT="9999"),
        "not exposed",
    ),
    "undeclared volume": (
        lambda d: _svc(d, "memory").update(volumes=["nowhere:/data"]),
        "not declared",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_compose_checks_catch(case: str) -> None:
    mutate, expected = MUTATIONS[case]
    doc = copy.deepcopy(load_compose())
    mutate(doc)
    problems = compose_problems(doc)
    assert any(expected in p for p in problems), problems


DOCKERFILE_MUTATIONS: dict[str, tuple[Callable[[str], str], str]] = {
    "a default service": (
        lambda t: t.replace("ARG SERVICE\n", "ARG SERVICE=router\n", 1),
        "ARG SERVICE",
    ),
    "literal wrong package": (
        lambda t: t.replace("--package podium-${SERVICE}", "--package podium-router"),
        "--package",
    ),
    "not --locked": (lambda t: t.replace("uv sync --locked", "uv sync"), "--locked"),
    "wrong module": (lambda t: t.replace("podium_%s", "podium_router"), "exec python -m"),
    "python run directly": (
        lambda t: t.replace('CMD ["podium-service"]', 'CMD ["python", "-m", "podium_memory"]'),
        "CMD",
    ),
    "runs as root": (lambda t: t.replace("USER podium:podium", "USER root"), "non-root"),
    "unpinned uv": (
        lambda t: re.sub(r"astral-sh/uv:[\d.]+", "astral-sh/uv:latest", t),
        "astral-sh/uv",
    ),
    "a member's pyproject not copied": (
        lambda t: t.replace("COPY services/recovery/pyproject.toml services/recovery/\n", ""),
        "every workspace pyproject.toml",
    ),
    "unknown ENV setting": (
        lambda t: t.replace("PODIUM_HOME=/data", "PODIUM_HOMEDIR=/data"),
        "unknown settings",
    ),
    "source excluded": (
        lambda t: t.replace("COPY shared/ shared/", "COPY tests/ tests/"),
        ".dockerignore",
    ),
}


@pytest.mark.parametrize("case", sorted(DOCKERFILE_MUTATIONS))
def test_dockerfile_checks_catch(case: str) -> None:
    mutate, expected = DOCKERFILE_MUTATIONS[case]
    original = (REPO / DOCKERFILE).read_text()
    broken = mutate(original)
    assert broken != original, "the mutation no longer applies to the Dockerfile"
    problems = dockerfile_problems("memory", broken)
    assert any(expected in p for p in problems), problems

"""`podium`: the operator CLI. Every command has --json for scripts; usage
errors are one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.exceptions import TyperException

from podium.cli_common import (
    EXIT_NO_OUTCOME,
    EXIT_TASK_FAILED,
    EXIT_USAGE,
    App,
    JsonFlag,
    call_api,
    emit,
    fail,
    kafka_settings,
    load_settings,
    validated,
)
from podium.cli_dlq import dlq_app
from podium.cli_hostile import hostile_command
from podium.cli_outbox import outbox_app
from podium.cli_trace import trace_command

if TYPE_CHECKING:
    from pathlib import Path

    from podium.client import Outcome
    from podium_contracts import TaskSubmitted
    from podium_shared import Settings

app = App("podium", "Orchestration layer for AI work, over Kafka.")
app.add_typer(dlq_app, name="dlq")
app.add_typer(outbox_app, name="outbox")
app.command(name="trace")(trace_command)
app.command(name="hostile")(hostile_command)


def print_version(wanted: bool) -> None:
    """`podium --version`: the installed package and the message contracts it speaks."""
    if not wanted:
        return
    from importlib.metadata import version

    from podium_contracts import ALL_CONTRACTS

    print(f"podium {version('podium')}")
    print(f"podium-contracts {version('podium-contracts')}")
    for contract in ALL_CONTRACTS:
        print(f"  {contract.CE_TYPE}")
    raise typer.Exit()


@app.callback()
def podium(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=print_version,
            is_eager=True,
            help="the installed version and the contract versions, then exit",
        ),
    ] = False,
) -> None:
    # Nothing to do: --version acts eagerly, and each command sets its logging up when it
    # runs (cli_common.Command), so that help and usage errors stay light.
    pass


class Broker(StrEnum):
    TANSU = "tansu"
    KAFKA = "kafka"


class AuthChoice(StrEnum):
    """How the principals of `podium up --secure` log in."""

    SCRAM = "scram"
    MTLS = "mtls"


BrokerOption = Annotated[
    Broker | None,
    typer.Option(
        help="the local broker to start: tansu (embedded, memory only) or kafka "
        "(Apache Kafka, fetched by Maven on first use; needs Java 17). "
        "Default: PODIUM_BROKER, else tansu"
    ),
]


def with_broker(settings: Settings, broker: Broker | None) -> Settings:
    """``settings`` with the broker chosen on the command line, if any."""
    if broker is None:
        return settings
    if settings.kafka_bootstrap:
        fail("--broker starts a local broker; unset PODIUM_KAFKA_BOOTSTRAP to use it", EXIT_USAGE)
    update: dict[str, Any] = {"broker": broker.value}
    if "PODIUM_FETCH_MAX_WAIT_MS" not in os.environ:  # the broker's own default
        update["fetch_max_wait_ms"] = 5 if broker is Broker.TANSU else 500
    return settings.model_copy(update=update)


def parse_input(raw: str) -> dict[str, Any]:
    import orjson

    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        fail(f"--input is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(value, dict):
        fail('--input must be a JSON object, such as \'{"text": "hi"}\'', EXIT_USAGE)
    return value


def outcome_text(outcome: Outcome) -> str:
    import orjson

    from podium_contracts import TaskCancelled, TaskCompleted, TaskRejected

    if isinstance(outcome, TaskCompleted):
        return f"completed {outcome.task_id}: {orjson.dumps(outcome.output).decode()}"
    if isinstance(outcome, TaskCancelled):
        return f"cancelled {outcome.task_id}: {outcome.reason}"
    where = f" (dead letter: {outcome.dlq.topic} {outcome.dlq.record_id})" if outcome.dlq else ""
    step = f" at step {outcome.error.step_id}" if outcome.error.step_id else ""
    verb = "rejected" if isinstance(outcome, TaskRejected) else "failed"
    return f"{verb} {outcome.task_id}{step}: {outcome.error.type}: {outcome.error.message}{where}"


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    from podium_contracts import TaskCancelled, TaskCompleted, TaskRejected

    status = {
        TaskCompleted: "completed",
        TaskCancelled: "cancelled",
        TaskRejected: "rejected",
    }.get(type(outcome), "failed")
    return {"status": status, **outcome.model_dump(mode="json")}


@app.command()
def up(
    executors: Annotated[int, typer.Option(min=1, max=16, help="executor replicas per pool")] = 1,
    pool: Annotated[list[str] | None, typer.Option(help="executor pools (repeatable)")] = None,
    broker: BrokerOption = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="local Kafka with TLS and SCRAM-SHA-512, a principal per service "
            "(with --broker kafka); see docs/security.md",
        ),
    ] = False,
    auth: Annotated[
        AuthChoice,
        typer.Option(
            "--auth",
            help="with --secure: how each principal logs in, a SCRAM password over TLS "
            "or a client certificate (mTLS)",
        ),
    ] = AuthChoice.SCRAM,
    no_api: Annotated[
        bool,
        typer.Option(
            "--no-api",
            help="do not start the api service (the operators' HTTP API); by default it "
            "listens on 127.0.0.1:PODIUM_API_PORT (8780, or a free port when that is taken)",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a local broker (unless PODIUM_KAFKA_BOOTSTRAP names a cluster), the four
    services and the api, and print the api's URL with an operator token."""
    from podium.stack import RestartPolicy, Stack, StackInterrupted, api_port

    settings = with_broker(load_settings(), broker)
    started = time.monotonic()
    if secure and settings.broker != "kafka":
        fail("--secure needs --broker kafka (Tansu has no TLS or SASL)", EXIT_USAGE)
    if auth is not AuthChoice.SCRAM and not secure:
        fail(f"--auth {auth.value} needs --secure", EXIT_USAGE)
    port: int | None = None
    if not no_api:
        try:
            port = api_port(os.environ.get("PODIUM_API_PORT"))
        except ValueError as exc:
            fail(f"invalid setting PODIUM_API_PORT: {exc}", EXIT_USAGE)
    stack = Stack(
        settings,
        executors=executors,
        pools=tuple(pool or ["default"]),
        secure=secure,
        auth=auth.value,
        api=not no_api,
        api_port=port,
    )
    # Signals are handled before anything starts: a SIGTERM or Ctrl-C while the stack
    # is still starting stops what was started, rather than leaving it without a parent.
    stopping = False
    started_up = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping and not started_up:  # still starting: unwind start()
            stopping = True
            raise StackInterrupted(signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    token: tuple[str, Path] | None = None
    try:
        stack.start()
        if stack.api:
            try:
                token = stack.operator_token()
            except Exception as exc:  # its database; the stack must not run on without it
                raise RuntimeError(f"the api's operator token could not be made: {exc}") from exc
    except StackInterrupted as exc:
        stack.stop()
        print(f"podium: {exc} during start-up; stopped", file=sys.stderr)
        raise SystemExit(130) from None
    except (RuntimeError, TimeoutError) as exc:
        stack.stop()
        fail(f"stack did not start: {exc}")
    started_up = True
    s = stack.settings
    services = [p.instance for p in stack.processes]
    info: dict[str, Any] = {
        "bootstrap": s.kafka_bootstrap,
        "embedded": stack.broker is not None,
        "broker": s.broker,
        "home": str(s.home),
        "services": services,
        "ready_s": round(time.monotonic() - started, 2),
    }
    exports = f"export PODIUM_KAFKA_BOOTSTRAP={s.kafka_bootstrap}"
    if stack.security is not None:
        # The CLI's own principal; the password or key stays in its file.
        client_env = stack.principal_env("operator")
        info["client_env"] = client_env
        exports += "".join(f" {k}={v}" for k, v in client_env.items())
    api_line = ""
    if token is not None:
        secret, token_path = token
        info |= {"api": stack.api_url, "api_token": secret, "api_token_file": str(token_path)}
        api_line = (
            f"\napi: {stack.api_url} (operator token for every tenant: {secret}; "
            f"saved in {token_path}, 0600)"
        )
    emit(
        info,
        as_json,
        f"podium ready in {info['ready_s']}s: broker {s.kafka_bootstrap}"
        f"{f' ({s.broker}, local)' if stack.broker else ''}, {', '.join(services)}; "
        f"logs in {s.home / 'logs'}; {exports}; "
        f"Ctrl-C to stop{api_line}",
    )
    sys.stdout.flush()
    reason = "stopped"
    try:
        reason = stack.supervise(RestartPolicy(), lambda: stopping)
    finally:
        print(f"podium: stopping ({reason})", file=sys.stderr)
        stack.stop()
    if reason != "stopped":
        raise SystemExit(1)


@app.command()
def executor(
    pool: Annotated[str | None, typer.Option(help="pool to serve (default: PODIUM_POOL)")] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=4096, help="steps in flight (default: PODIUM_CONCURRENCY)"),
    ] = None,
) -> None:
    """Run one executor replica of a pool until SIGTERM/Ctrl-C (start as many as you like)."""
    from podium_executor.__main__ import load_settings as executor_settings
    from podium_executor.__main__ import main as executor_main

    # Refuse a bad pool before anything starts.
    validated(lambda: executor_settings(pool, concurrency), "invalid executor setting ")
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)  # a replica logs what it meets
    argv: list[str] = []
    if pool:
        argv += ["--pool", pool]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    executor_main(argv)


@app.command()
def submit(
    workflow: Annotated[str, typer.Option("--workflow", "-w", help="workflow name")],
    input: Annotated[str, typer.Option("--input", "-i", help="task input, a JSON object")] = "{}",
    task_id: Annotated[str | None, typer.Option(help="idempotency key; random if unset")] = None,
    tenant: Annotated[str, typer.Option(help="tenant")] = "default",
    subject: Annotated[str | None, typer.Option(help="who the task is for")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for and print the outcome")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait")] = 60.0,
    as_json: JsonFlag = False,
) -> None:
    """Publish a TaskSubmitted to podium.tasks.v1.

    With --wait, the exit code says how it ended: 0 completed, 1 failed or cancelled,
    3 no outcome within --timeout (the task may still finish); 2 is a usage error."""
    import asyncio
    import uuid

    from podium_contracts import TaskSubmitted

    data = parse_input(input)
    settings = kafka_settings()
    task = validated(
        lambda: TaskSubmitted(
            task_id=uuid.uuid4().hex if task_id is None else task_id,  # '' is refused
            workflow=workflow,
            input=data,
            tenant=tenant,
            subject=subject,
        ),
        "invalid task: ",
    )
    code = asyncio.run(_submit(settings, task, wait, timeout, as_json))
    raise SystemExit(code)


async def _submit(
    settings: Settings, task: TaskSubmitted, wait: bool, timeout: float, as_json: bool
) -> int:
    from podium.client import PodiumClient
    from podium_contracts import TaskCompleted

    async with PodiumClient(settings, tenant=task.tenant) as client:
        await client.submit(task)
        if not wait:
            emit(
                {"task_id": task.task_id, "status": "submitted"},
                as_json,
                f"submitted {task.task_id}",
            )
            return 0
        try:
            outcome = (await client.wait_for([task.task_id], timeout))[task.task_id]
        except TimeoutError:
            fail(
                f"no outcome for {task.task_id} within {timeout}s "
                f"(check `podium status {task.task_id}`)",
                EXIT_NO_OUTCOME,
            )
    emit(outcome_json(outcome), as_json, outcome_text(outcome))
    return 0 if isinstance(outcome, TaskCompleted) else EXIT_TASK_FAILED


@app.command()
def status(
    task_id: Annotated[str | None, typer.Argument(help="one task; omit to list tasks")] = None,
    state: Annotated[
        str | None, typer.Option("--status", help="running, completed, failed, cancelled")
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="only this workflow")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="newest first")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Show one task's current state, or list tasks with filters (from the api)."""
    from podium import api_views as views

    if state and state not in views.CLI_STATUSES:
        fail(f"--status must be running, completed, failed or cancelled, not {state!r}", EXIT_USAGE)
    if task_id is None:
        found = call_api(
            lambda api: api.list_runs(
                status=views.api_status(state), workflow=workflow, tenant=tenant, limit=limit
            )
        )
        rows = [views.run_summary(r) for r in found]
        emit(rows, as_json, views.list_lines(rows))
        return
    info = views.run_detail(call_api(lambda api: api.get_run(task_id)))
    emit(info, as_json, views.status_line(info))


@app.command()
def history(
    task_id: Annotated[str, typer.Argument(help="the task's id")], as_json: JsonFlag = False
) -> None:
    """What ran, what failed, why, and what happens next: the task's audit trail."""
    from podium import api_views as views

    info = call_api(lambda api: views.history_view(api.get_run(task_id), api.history(task_id)))
    lines = [
        f"{info['task_id']} {info['status']} workflow {info['workflow']} "
        f"v{info['workflow_version']}"
    ]
    for e in info["history"]:
        where = " ".join(
            x
            for x in (
                e["step_id"] and f"step {e['step_id']}",
                e["attempt"] and f"attempt {e['attempt']}",
                e["capability"] and f"{e['capability']}@{e['pool']}",
                e["model"] and f"model {e['model']}",
            )
            if x
        )
        lines.append(f"  {e['at']}  {e['event']:<20} {where}  {e['cause']}".rstrip())
    lines.append(f"next: {info['next']}")
    emit(info, as_json, "\n".join(lines))


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    reason: Annotated[str, typer.Option(help="recorded in the history")] = "",
    tenant: Annotated[
        str | None,
        typer.Option(help="ignored: the api's token says which tenants it may cancel for"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Ask the api to cancel a task (an operator token): the router stops dispatching
    and ends it as cancelled; the api records who asked."""
    from podium_contracts import TaskCancelRequested

    del tenant  # kept so that scripts passing it still run
    # A task id no run can have is a usage error, told before anything is asked.
    validated(
        lambda: TaskCancelRequested(task_id=task_id, reason=reason), "invalid cancel request: "
    )
    call_api(lambda api: api.cancel(task_id, reason))
    emit(
        {"task_id": task_id, "status": "cancel requested"},
        as_json,
        f"cancel requested for {task_id}",
    )


@app.command()
def demo(broker: BrokerOption = None, as_json: JsonFlag = False) -> None:
    """Start a local stack, run one `hello` task to completion, and stop."""
    import asyncio
    import uuid

    from podium.client import PodiumClient
    from podium.stack import Stack
    from podium_contracts import TaskCompleted, TaskSubmitted

    settings = with_broker(load_settings(), broker)
    started = time.monotonic()
    try:
        with Stack(settings) as stack:
            ready_s = time.monotonic() - started
            task = TaskSubmitted(
                task_id=f"demo-{uuid.uuid4().hex[:8]}",
                workflow="hello",
                input={"text": "hello, podium"},
            )

            async def run() -> Outcome:
                async with PodiumClient(stack.settings) as client:
                    t0 = time.perf_counter()
                    await client.submit(task)
                    out = (await client.wait_for([task.task_id], 30))[task.task_id]
                    print(f"round trip {1000 * (time.perf_counter() - t0):.1f} ms", file=sys.stderr)
                    return out

            print(f"stack ready in {ready_s:.1f}s (broker {stack.bootstrap})", file=sys.stderr)
            outcome = asyncio.run(run())
    except (RuntimeError, TimeoutError) as exc:
        fail(str(exc))
    emit(outcome_json(outcome), as_json, outcome_text(outcome))
    if not isinstance(outcome, TaskCompleted):
        raise SystemExit(1)


@app.command()
def topics(
    write: Annotated[bool, typer.Option("--write", help="regenerate infra/topics.yaml")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List the topics podium declares (and their partitions)."""
    from podium.infra import render_topics_yaml, topic_rows

    settings = load_settings()
    rows = topic_rows(settings.topic_prefix)
    if write:
        from pathlib import Path

        target = Path("infra/topics.yaml")
        if not target.parent.is_dir():
            fail(
                f"--write regenerates infra/topics.yaml of a podium checkout, and "
                f"{Path.cwd()} has no infra/: run it from the repository's root",
                EXIT_USAGE,
            )
        target.write_text(render_topics_yaml())
    emit(rows, as_json, "\n".join(f"{r['name']}\t{r['partitions']}\t{r['key']}" for r in rows))


@app.command()
def acls(
    pool: Annotated[list[str] | None, typer.Option(help="executor pools (repeatable)")] = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option(help="tenants bound to their own topics (repeatable; PODIUM_TENANTS)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print the Kafka ACLs each podium principal needs (what `podium up --secure`
    applies), as arguments to `kafka-acls` for a cluster of your own."""
    from podium_shared.acls import acls as generate

    settings = load_settings()
    tenants = tuple(tenant) if tenant else settings.tenant_names
    entries = generate(settings.topic_prefix, tuple(pool or ["default"]), tenants)
    rows = [
        {
            "principal": f"User:{a.principal}",
            "resource": a.resource.name.lower(),
            "name": a.name,
            "pattern": a.pattern.name.lower(),
            "operation": a.operation.name.lower(),
        }
        for a in entries
    ]
    emit(rows, as_json, "\n".join(a.describe() for a in entries))


@app.command()
def migrate(
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="router, executor, memory or recovery (default: all)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upgrade the services' databases to their newest schema (the executor's of PODIUM_POOL)."""
    from podium.migrate import SERVICES, migrate_service

    settings = load_settings()
    wanted = service or list(SERVICES)
    unknown = sorted(set(wanted) - set(SERVICES))
    if unknown:
        fail(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    revisions = {s: migrate_service(settings, s) for s in SERVICES if s in wanted}
    emit(revisions, as_json, "\n".join(f"{s}\t{r}" for s, r in revisions.items()))


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="tiny counts: a smoke run of every figure")
    ] = False,
    repeat: Annotated[
        int | None, typer.Option(min=1, help="runs per figure; the median is reported (3)")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.1, help="open-loop arrival rate, tasks/s (20)")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(min=0.1, help="open-loop duration per run, s (10)")
    ] = None,
    throughput_seconds: Annotated[
        float | None, typer.Option(min=0.1, help="throughput run duration, s (10)")
    ] = None,
    in_flight: Annotated[
        int | None, typer.Option(min=1, help="tasks in flight in the throughput run (64)")
    ] = None,
    temporal: Annotated[bool, typer.Option(help="measure Temporal too")] = True,
    postgres: Annotated[
        bool, typer.Option(help="measure the whole stack on PostgreSQL too")
    ] = True,
    api: Annotated[
        bool, typer.Option(help="measure the api service too (reads, projection)")
    ] = True,
    only: Annotated[
        str | None,
        typer.Option(
            help="run one section alone and render the report again with it: api "
            "(its figures replace the api's in OUT_DIR/results.json)"
        ),
    ] = None,
    peers: Annotated[
        str,
        typer.Option(
            help="the peers that run beside podium: temporal, restate, dbos (comma-separated), "
            "all or none"
        ),
    ] = "all",
    profile: Annotated[
        bool | None, typer.Option(help="py-spy the services during a throughput run")
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="write the Markdown report to this file")
    ] = None,
    out_dir: Annotated[
        str, typer.Option(help="folder for results.json and the PNG plots")
    ] = "docs/bench",
    broker: BrokerOption = None,
    as_json: JsonFlag = False,
) -> None:
    """podium beside Temporal: latency, throughput, scaling, recovery, each beside a baseline."""
    import importlib.util
    from pathlib import Path

    import orjson

    # The bench is its own workspace package (bench/), which `make run` does not install.
    if importlib.util.find_spec("podium_bench") is None:
        fail("the bench is not installed: run `make bench`", EXIT_USAGE)
    from podium_bench.options import PeerOptions
    from podium_bench.peers import parse_peers
    from podium_bench.report import strip_samples
    from podium_bench.run import run_api_only, run_peer_bench

    if only not in (None, "api"):
        fail(f"--only: no section {only!r}; choose api", EXIT_USAGE)
    opts = PeerOptions.quick() if quick else PeerOptions()
    chosen = {
        "repeat": repeat,
        "rate_per_s": rate,
        "latency_s": seconds,
        "throughput_s": throughput_seconds,
        "in_flight": in_flight,
        "profile": profile,
    }
    for key, value in chosen.items():
        if value is not None:
            setattr(opts, key, value)
    opts.api = api
    opts.postgres = postgres
    try:
        opts.peers = tuple(p for p in parse_peers(peers) if temporal or p != "temporal")
    except ValueError as exc:
        fail(f"--peers: {exc}", EXIT_USAGE)
    opts.temporal = "temporal" in opts.peers
    opts.output = Path(output) if output else None
    opts.out_dir = Path(out_dir)
    settings = with_broker(load_settings(), broker)
    if only == "api":
        record = run_api_only(settings, opts)
        text = opts.output.read_text() if opts.output else str(record["figures"]["api"]["targets"])
        emit(strip_samples(record), as_json, text)
        return
    results = run_peer_bench(settings, opts)
    text = (
        opts.output.read_text()
        if opts.output
        else orjson.dumps(results["targets"], option=orjson.OPT_INDENT_2).decode()
    )
    emit(strip_samples(results), as_json, text)


def _bootstrap() -> str:
    from pydantic import ValidationError

    from podium_shared import Settings

    try:
        return Settings().kafka_bootstrap or ""
    except ValidationError:
        return ""


def _refusal(exc: Exception) -> str | None:
    """Why a secure broker refused us, when a failed connection was that: aiokafka's
    bootstrap reports a refused certificate (and some refused logins) as a connection
    error, so one direct connection asks again, as a service does at start-up."""
    from aiokafka.errors import KafkaConnectionError
    from pydantic import ValidationError

    from podium_shared import Settings
    from podium_shared.aio import run_sync
    from podium_shared.kafka import refused_because

    if not isinstance(exc, KafkaConnectionError):
        return None
    try:
        settings = Settings()
    except ValidationError:
        return None
    if settings.security_protocol == "PLAINTEXT" or not settings.kafka_bootstrap:
        return None
    refused = run_sync(refused_because(settings))
    return str(refused) if refused is not None else None


def main() -> None:
    try:
        result = app(standalone_mode=False)
    except typer.Abort:
        fail("aborted", 130)
    except TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `podium` alone: the help, as click does
            print(exc.format_message(), file=sys.stderr)
            raise SystemExit(2) from None
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        fail(f"{exc.format_message()}{hint}", exc.exit_code)
    except Exception as exc:
        from podium.cli_errors import broker_error  # aiokafka: loaded on this path only

        message = _refusal(exc) or broker_error(exc, _bootstrap())
        if message is None:
            raise
        fail(message, EXIT_USAGE)
    if isinstance(result, int) and result:
        raise SystemExit(result)

"""DBOS as a peer (issue 18): the ``dbos`` Python package (pinned in the bench's
dependencies) on PostgreSQL, one ``@DBOS.step`` per step (``podium_bench.dbos_service``).

DBOS is a library: workflows run inside the application's process, which records
each step in PostgreSQL. The bench runs that application as a worker process of its
own, behind a small HTTP endpoint (hypercorn; ``POST /hello`` runs the ``hello``
workflow and answers its output), as a DBOS application serves its callers, so the
load generator's CPU is not counted as DBOS's and the same driver as for Restate calls it.

PostgreSQL: the machine's server binaries (``infra/postgres/ensure.sh`` installs them
where they are missing), in a cluster of the bench's own (initdb in the run's scratch
folder, loopback, a free port) with the server's default durability (``fsync``,
``synchronous_commit`` on). Not the test suite's cluster: that one runs with
``fsync=off`` (a scratch cluster for tests) and other processes share it, so neither
the durability nor the CPU of its processes would be DBOS's alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podium_bench.options import PeerOptions
from podium_bench.peers import (
    PeerUnavailable,
    Worker,
    free_port,
    measure_over_http,
    serve_app,
    spawn,
    stop_process,
    worker_parser,
)

MODULE = "podium_bench.dbos_peer"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and postgres, else PATH's."""
    base = Path("/usr/lib/postgresql")
    found = sorted(
        (d for d in base.glob("*/bin") if (d / "initdb").exists() and (d / "postgres").exists()),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    if found:
        return found[0]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("postgres") else None


def postgres_bindir() -> Path:
    """The server binaries, installed by ``infra/postgres/ensure.sh`` where missing."""
    bindir = find_bindir()
    if bindir is None:
        script = _repo_root() / "infra" / "postgres" / "ensure.sh"
        if script.exists():
            subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        bindir = find_bindir()
    if bindir is None:
        raise PeerUnavailable(
            "no PostgreSQL server binaries (initdb, postgres) and infra/postgres/ensure.sh "
            "could not install them"
        )
    return bindir


def _as_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as the ``postgres`` system user then."""
    if os.geteuid() != 0:
        return cmd
    if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "postgres"], check=True, capture_output=True)
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    """A PostgreSQL cluster of the bench's own, with the server's default durability."""

    bindir: Path
    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bindir / "postgres"), "--version"], capture_output=True, text=True
        )
        return out.stdout.strip()

    def start(self, timeout_s: float = 60.0) -> Postgres:
        self.home.mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        if os.geteuid() == 0:
            self.home.parent.chmod(0o755)
            self.home.chmod(0o755)
            _chown_postgres(self.home)
        init = subprocess.run(
            _as_owner(
                [
                    *(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres"),
                    *("-A", "trust", "-E", "UTF8"),
                ]
            ),
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            raise PeerUnavailable(f"initdb failed: {init.stderr.strip()[-300:]}")
        self.proc = spawn(
            _as_owner(
                [
                    *(str(self.bindir / "postgres"), "-D", str(data)),
                    *("-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}"),
                    *("-c", f"unix_socket_directories={self.home}", "-c", "max_connections=200"),
                ]
            ),
            self.home / "server.log",
        )
        deadline = time.monotonic() + timeout_s
        import psycopg

        while True:
            if self.proc.poll() is not None:
                raise PeerUnavailable(f"postgres exited with {self.proc.returncode}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PeerUnavailable(f"postgres not ready after {timeout_s:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        pid_file = self.home / "data" / "postmaster.pid"
        if self.proc is not None and self.proc.poll() is None and pid_file.exists():
            try:  # SIGINT to the postmaster: a fast shutdown (runuser stands between)
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
                self.proc.wait(30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _chown_postgres(path: Path) -> None:
    subprocess.run(["chown", "-R", "postgres:", str(path)], check=False, capture_output=True)


def dbos_side(home: Path, opts: PeerOptions, advance: Callable[[str], None]) -> dict[str, Any]:
    advance("DBOS: PostgreSQL cluster starting")
    from importlib.metadata import version

    bindir = postgres_bindir()
    pg = Postgres(bindir, home / "postgres")
    out: dict[str, Any] = {"version": version("dbos"), "postgres": pg.version()}
    worker = Worker(MODULE, home, "the DBOS worker", ("--database-url", pg.url), ready_s=120)
    with pg, worker:
        measure = measure_over_http(worker.uri, "/{workflow}", "DBOS", "dbos", opts, advance)
        out.update(asyncio.run(measure))
    return out


# ----- the worker process -----


async def _serve(port: int, database_url: str) -> None:
    from podium_bench.dbos_service import app, launch

    launch(database_url)  # on the loop that serves the workflows
    await serve_app(app, port)


def main(argv: list[str] | None = None) -> None:
    parser, worker = worker_parser(MODULE, "serve the bench's DBOS workflows over HTTP")
    worker.add_argument("--database-url", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.database_url))


if __name__ == "__main__":
    main()

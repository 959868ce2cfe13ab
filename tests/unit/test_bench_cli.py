"""`podium bench` where the bench package is not installed (after `make run`, which
installs podium alone): one line that says what to do, and exit 2."""

from __future__ import annotations

import sys

import pytest

from podium import cli
from podium_bench.options import PeerOptions

pytestmark = pytest.mark.unit


def test_bench_without_the_bench_package_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry is how Python spells "not importable": find_spec answers None.
    monkeypatch.setitem(sys.modules, "podium_bench", None)
    with pytest.raises(SystemExit) as exit_:
        cli.app(["bench", "--quick"], standalone_mode=False)
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "podium: error: the bench is not installed: run `make bench`\n"


@pytest.mark.parametrize(("flag", "postgres"), [([], True), (["--no-postgres"], False)])
def test_the_stack_on_postgresql_is_measured_unless_declined(
    monkeypatch: pytest.MonkeyPatch, flag: list[str], postgres: bool
) -> None:
    import podium_bench.run

    chosen: list[PeerOptions] = []

    def run(settings: object, opts: PeerOptions) -> dict[str, object]:
        chosen.append(opts)
        return {"targets": []}

    monkeypatch.setattr(podium_bench.run, "run_peer_bench", run)
    cli.app(["bench", "--quick", "--peers", "none", *flag], standalone_mode=False)
    assert [o.postgres for o in chosen] == [postgres]

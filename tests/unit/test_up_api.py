"""`podium up` and the api: which port it listens on, and the operator token the
local stack makes for its CLI (kept in PODIUM_HOME/secrets/operator.token, 0600)."""

from __future__ import annotations

import contextlib
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.stack import DEFAULT_API_PORT, Stack, api_port, operator_token_file
from podium_api import tokens
from podium_api.bootstrap import open_api_database
from podium_shared import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def default_port_taken() -> Iterator[None]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Something else may hold it already: taken all the same.
        with contextlib.suppress(OSError):
            s.bind(("127.0.0.1", DEFAULT_API_PORT))
            s.listen()
        yield


def test_an_explicit_port_is_kept_even_when_taken(default_port_taken: None) -> None:
    assert api_port(str(DEFAULT_API_PORT)) == DEFAULT_API_PORT
    assert api_port("9123") == 9123


def test_without_a_setting_a_taken_default_falls_back_to_a_free_port(
    default_port_taken: None,
) -> None:
    port = api_port(None)
    assert port != DEFAULT_API_PORT and 0 < port <= 65_535
    assert api_port("") != DEFAULT_API_PORT


def test_port_zero_means_a_free_one() -> None:
    assert api_port("0") > 0


@pytest.mark.parametrize("bad", ["-1", "70000", "http"])
def test_a_bad_port_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        api_port(bad)


def principal_of(settings: Settings, token: str) -> tokens.Principal | None:
    engine = open_api_database(settings)
    try:
        with engine.begin() as conn:
            return tokens.authenticate(conn, token)
    finally:
        engine.dispose()


def test_the_operator_token_is_made_once_kept_private_and_replaced_when_revoked(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path)
    stack = Stack(settings, api=True)
    token, path = stack.operator_token()
    assert path == operator_token_file(tmp_path) == tmp_path / "secrets" / "operator.token"
    assert path.read_text().strip() == token and token.startswith(tokens.PREFIX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    who = principal_of(settings, token)
    assert who is not None and who.role == "operator" and who.every_tenant

    # A second `podium up` on the same home: the same token, so the CLI's copy stays valid.
    assert stack.operator_token() == (token, path)

    assert who is not None
    engine = open_api_database(settings)
    try:
        with engine.begin() as conn:
            assert tokens.revoke(conn, who.token_id)
    finally:
        engine.dispose()
    renewed, _ = stack.operator_token()
    assert renewed != token and path.read_text().strip() == renewed
    assert principal_of(settings, renewed) is not None


def test_a_token_of_less_than_an_operator_in_the_file_is_replaced(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    engine = open_api_database(settings)
    try:
        with engine.begin() as conn:
            _, viewer = tokens.create(conn, "viewer", ["acme"])
    finally:
        engine.dispose()
    path = operator_token_file(tmp_path)
    path.parent.mkdir(mode=0o700)
    path.write_text(viewer + "\n")
    token, _ = Stack(settings, api=True).operator_token()
    assert token != viewer
    who = principal_of(settings, token)
    assert who is not None and who.role == "operator" and who.every_tenant

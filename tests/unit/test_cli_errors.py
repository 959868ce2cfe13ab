"""The CLI's one-line messages for a broker it cannot reach or that refuses its login,
and for values that fail their contract (the decisions; tests/e2e/test_cli.py runs them)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from aiokafka.conn import ScramAuthenticator
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from pydantic import ValidationError

from podium.cli_errors import broker_error, invalid
from podium_contracts import TaskCancelRequested
from podium_shared.dlq_replay import parse_since

pytestmark = pytest.mark.unit


def scram_refusal() -> BaseException:
    """What aiokafka raises when the server's final SCRAM message carries an error."""
    try:
        client = SimpleNamespace(_server_signature=b"expected")
        ScramAuthenticator.process_server_final_message(client, "e=invalid-proof")
    except KeyError as exc:
        return exc
    raise AssertionError("aiokafka accepted a SCRAM error reply")


def test_an_unreachable_broker_names_the_address_and_the_setting() -> None:
    message = broker_error(KafkaConnectionError("Unable to bootstrap from [...]"), "h:1")
    assert message is not None
    assert message.startswith("cannot connect to the Kafka broker at 'h:1'")
    assert "PODIUM_KAFKA_BOOTSTRAP" in message


@pytest.mark.parametrize(
    "exc", [scram_refusal(), SaslAuthenticationFailed("bad password")], ids=["scram", "kafka"]
)
def test_a_refused_login_says_the_password_may_be_wrong(exc: BaseException) -> None:
    message = broker_error(exc, "h:1")
    assert message is not None and "refused the login: wrong user name or password?" in message
    assert "PODIUM_SASL_PASSWORD" in message


def test_a_principal_its_acls_deny_is_told_so_with_the_resource() -> None:
    message = broker_error(TopicAuthorizationFailedError("podium.tasks.v1"), "h:1")
    assert message is not None
    assert "denied this principal on podium.tasks.v1" in message and "podium acls" in message
    message = broker_error(GroupAuthorizationFailedError(), "h:1")
    assert message is not None and "(GroupAuthorizationFailedError)" in message


def test_other_errors_are_not_dressed_up_as_broker_problems() -> None:
    assert broker_error(KeyError("v"), "h:1") is None  # not raised by the SCRAM steps
    assert broker_error(ValueError("x"), "h:1") is None
    assert broker_error(RuntimeError("x"), "h:1") is None


def test_invalid_names_the_field_and_does_not_echo_a_huge_value() -> None:
    with pytest.raises(ValidationError) as caught:
        TaskCancelRequested(task_id="x" * 10_000)
    assert invalid(caught.value) == "task_id: String should have at most 200 characters"


def test_an_age_beyond_the_calendar_is_a_value_error() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="reaches back before year 1"):
        parse_since("99999999999999h", now)
    with pytest.raises(ValueError, match="reaches back before year 1"):
        parse_since("800000d", now)  # timedelta fits, the date does not
    assert parse_since("2h", now) == datetime(2026, 11, 30, 22, tzinfo=UTC)

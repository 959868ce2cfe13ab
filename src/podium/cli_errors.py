"""What the CLI says, in one line, when the broker cannot be reached or refuses it, or a
value fails its contract: the decisions, apart from printing and exiting.

aiokafka reports an unreachable or unresolvable bootstrap as ``KafkaConnectionError``
and a SCRAM login the broker refused as ``KeyError: 'v'`` (its SCRAM code reads the
server's signature, ``v=``, from a reply that carries an error, ``e=``, instead)."""

from __future__ import annotations

import traceback

from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from pydantic import ValidationError

SASL_SETTINGS = "PODIUM_SASL_USERNAME, PODIUM_SASL_PASSWORD and PODIUM_SASL_MECHANISM"
# aiokafka's SCRAM steps: a failure raised in one of them is a refused login.
_SCRAM_STEPS = frozenset({"process_server_first_message", "process_server_final_message"})


def _raised_in_scram(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name in _SCRAM_STEPS


def broker_error(exc: BaseException, bootstrap: str) -> str | None:
    """One line for a broker that cannot be reached or refused the login; None otherwise."""
    if isinstance(exc, KafkaConnectionError):
        return (
            f"cannot connect to the Kafka broker at {bootstrap!r} "
            "(PODIUM_KAFKA_BOOTSTRAP): is it running, is the address host:port, and does "
            "it want TLS or a login (PODIUM_SECURITY_PROTOCOL)?"
        )
    refused = (AuthenticationFailedError, SaslAuthenticationFailed, IllegalSaslStateError)
    if isinstance(exc, refused) or (
        isinstance(exc, KeyError | ValueError) and _raised_in_scram(exc)
    ):
        return (
            f"the broker at {bootstrap!r} refused the login: wrong user name or password? "
            f"(check {SASL_SETTINGS})"
        )
    denied = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)
    if isinstance(exc, (*denied, ClusterAuthorizationFailedError)):
        # Logged in, but this principal's ACLs do not allow it: the CLI's principal is
        # the operator's (`podium up --secure` prints its settings).
        what = f" on {exc.args[0]}" if isinstance(exc, denied) and exc.args else ""
        return (
            f"the broker at {bootstrap!r} denied this principal{what} "
            f"({type(exc).__name__}): its ACLs do not allow it (see `podium acls`)"
        )
    if isinstance(exc, UnsupportedSaslMechanismError | AuthenticationMethodNotSupported):
        return (
            f"the broker at {bootstrap!r} does not accept this kind of login: {exc} "
            f"(check {SASL_SETTINGS})"
        )
    return None


def invalid(exc: ValidationError) -> str:
    """The first problem of a validation error, without echoing the (maybe huge) value."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"

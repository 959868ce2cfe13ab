"""`python -m podium_api`: run the api service until SIGTERM.

`python -m podium_api token create --role operator --tenant '*'` stores a new
token in the api's database and prints it, once; `token revoke <id>` revokes one;
`openapi [--write]` prints (or writes) the OpenAPI document."""

from __future__ import annotations

import argparse
import sys

from podium_api.migrations import HISTORY
from podium_api.tokens import ROLES, create, revoke
from podium_shared.migrations import open_database
from podium_shared.settings import Settings
from podium_shared.startup import read_settings


def token_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m podium_api token")
    sub = parser.add_subparsers(dest="action", required=True)
    made = sub.add_parser("create", help="create a token and print it (shown only once)")
    made.add_argument("--role", choices=ROLES, required=True)
    made.add_argument(
        "--tenant", action="append", required=True, help="repeatable; '*' for every tenant"
    )
    made.add_argument("--name", default="", help="who or what holds it")
    gone = sub.add_parser("revoke", help="revoke a token by its id")
    gone.add_argument("token_id")
    args = parser.parse_args(argv)
    engine = open_database(read_settings(Settings).database_url("api"), HISTORY)
    try:
        with engine.begin() as conn:
            if args.action == "create":
                token_id, token = create(conn, args.role, args.tenant, args.name)
                print(token)
                print(
                    f"id {token_id}, role {args.role}, tenants {','.join(args.tenant)}",
                    file=sys.stderr,
                )
                return 0
            if revoke(conn, args.token_id):
                return 0
            print(f"no active token {args.token_id}", file=sys.stderr)
            return 1
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["token"]:
        sys.exit(token_command(args[1:]))
    if args[:1] == ["openapi"]:
        from podium_api import openapi

        if args[1:] == ["--write"]:
            openapi.write()
        else:
            sys.stdout.write(openapi.render())
        return
    # Imported here: the token command needs neither the web stack nor the runtime.
    from podium_api.bootstrap import build
    from podium_shared.runtime import serve

    serve("api", build)


if __name__ == "__main__":
    main()

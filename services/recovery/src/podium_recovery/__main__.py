"""`python -m podium_recovery`: run the recovery service until SIGTERM."""

from __future__ import annotations

from podium_recovery.bootstrap import build
from podium_shared.runtime import serve


def main() -> None:
    serve("recovery", build)


if __name__ == "__main__":
    main()

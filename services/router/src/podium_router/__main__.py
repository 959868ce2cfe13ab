"""`python -m podium_router`: run the router until SIGTERM."""

from __future__ import annotations

from podium_router.bootstrap import build
from podium_router.workflows import WorkflowError
from podium_shared.runtime import serve


def main() -> None:
    serve("router", build, definitions={WorkflowError: "bad workflow definition"})


if __name__ == "__main__":
    main()

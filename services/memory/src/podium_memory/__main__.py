"""`python -m podium_memory`: run the memory service until SIGTERM."""

from __future__ import annotations

from podium_memory.bootstrap import build
from podium_shared.runtime import serve


def main() -> None:
    serve("memory", build)


if __name__ == "__main__":
    main()

"""The api section's load generator, a process of its own (`python -m
podium_bench.api_load PLAN_JSON`): it reads a plan, makes the requests over real
HTTP and prints each case's latencies (ms) as JSON on stdout.

One keep-alive connection, one request at a time, the cases taken in turn (case 1,
case 2, ..., case 1, ...), so a burst of other work on the machine falls on every
case alike, the baseline (``/healthz``) included. A response that is not 200 stops
the run: a figure of failed requests would measure the wrong thing.

The plan: ``{"url", "tokens": {name: token}, "warmup", "requests", "cases": [{"name",
"path" (or "paths": cycled), "params", "token"}]}``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx


def run(
    plan: dict[str, Any], transport: httpx.BaseTransport | None = None
) -> dict[str, list[float]]:
    """Every case's latencies (ms), warm-up rounds left out; ``transport``: tests'."""
    cases: list[dict[str, Any]] = plan["cases"]
    tokens: dict[str, str] = plan["tokens"]
    samples: dict[str, list[float]] = {c["name"]: [] for c in cases}
    rounds = int(plan["warmup"]) + int(plan["requests"])
    with httpx.Client(base_url=plan["url"], timeout=30.0, transport=transport) as client:
        for i in range(rounds):
            for case in cases:
                paths = case.get("paths") or [case["path"]]
                path = paths[i % len(paths)]
                token = case.get("token")
                headers = {"Authorization": f"Bearer {tokens[token]}"} if token else {}
                started = time.perf_counter()
                response = client.get(path, params=case.get("params"), headers=headers)
                response.read()
                took = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(
                        f"{case['name']}: {path} answered {response.status_code}: "
                        f"{response.text[:300]}"
                    )
                if i >= plan["warmup"]:
                    samples[case["name"]].append(took)
    return samples


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m podium_bench.api_load PLAN_JSON")
    with open(argv[0]) as f:
        plan = json.load(f)
    json.dump(run(plan), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The expression sandbox's size bound holds before anything is allocated, and what
could only fail when a step is sent is refused when the workflow loads."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from podium_router.expressions import MAX_RESULT, ExpressionError, check, evaluate, size

pytestmark = pytest.mark.unit

CTX: dict[str, Any] = {
    "input": {"fmt": "%0300000000d", "n": 1, "m": 1_000_000, "s": "ab", "k": "key", "i": 7},
    "steps": {},
    "task": {},
}


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("input.fmt % input.n", "printf formatting"),
        ("input.s % 1", "printf formatting"),
        ("[[0] * input.m] * input.m", "result larger than"),
        ("input.m * [[0] * input.m]", "result larger than"),
        ("[['x' * input.m]] * 2", "result larger than"),
        ("['ab' * 600000] + ['ab' * 600000]", "result larger than"),
        ("[[0] * input.m, [0] * input.m]", "result larger than"),
        ("{'a': [0] * input.m, 'b': [0] * input.m}", "result larger than"),
        ("{input.i: 1}", "object key 7 is not a string"),
    ],
)
def test_oversized_results_are_refused_before_they_are_built(source: str, says: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ExpressionError, match=says):
            evaluate(source, CTX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Bytes, not seconds: what building them would cost, and what load cannot change.
    assert peak < 64 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated before the refusal"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("input.m % 7", 1_000_000 % 7),
        ("[0] * 3", [0, 0, 0]),
        ("'ab' * 3 + 'c'", "abababc"),
        ("[[0] * 1000] * 200 == [[0] * 1000] * 200", True),
        ("{input.k: [1]}", {"key": [1]}),
        ("len('x' * (input.m - 2))", MAX_RESULT - 2),  # with its quotes, just the bound
        ("len([0] * (input.m // 2 - 1))", MAX_RESULT // 2 - 1),  # 0, 0, … 0 in brackets
        ("100000000000 * 100000000000 > 1", True),
    ],
)
def test_results_within_the_bound_still_work(source: str, expected: Any) -> None:
    assert evaluate(source, CTX) == expected


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("b'x'", "b'x' is not allowed"),
        ("1j", "1j is not allowed"),
        ("-2j + 1", "2j is not allowed"),
        ("...", "... is not allowed"),
        ("{1: 2}", "object keys must be strings"),
        ("{None: 2}", "object keys must be strings"),
        ("{**input}", "object keys must be strings"),
        ("{'a': 1, **input}", "object keys must be strings"),
        ("'%0300000000d' % input.n", "printf formatting"),
    ],
)
def test_what_cannot_work_is_refused_when_the_workflow_loads(source: str, says: str) -> None:
    with pytest.raises(ExpressionError, match=says):
        check(source)


def test_size_is_the_json_length_and_refuses_what_is_not_json() -> None:
    assert size("abc") == 5
    assert size([1, "ab", [3, 4], {"k": "vv"}]) == len(b'[1,"ab",[3,4],{"k":"vv"}]')
    assert size(10**30) == 8  # numbers are not what makes a value large
    with pytest.raises(ExpressionError, match="not JSON"):
        size([10**30])
